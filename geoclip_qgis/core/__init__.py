"""The plugin's core: settings and engine session, tasks, inputs, dependencies."""
