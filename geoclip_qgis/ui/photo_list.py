"""The Input tab's list of photos and folders (PhotoList), the item role that keeps each full path, and
the file filter the dock's "Add photos…" dialog uses. A folder's photos are counted in a thread, as a
run would walk them, so a large folder never holds up the dock."""

from __future__ import annotations

import threading
from pathlib import Path

from qgis.core import QgsApplication, QgsMimeDataUtils
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

from ..core.plain_text import tooltip

PHOTO_FILTER = "Photos (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp *.heic *.heif);;All files (*)"
PATH_ROLE = Qt.ItemDataRole.UserRole


def _count_folder(folder: str) -> int:
    from ..backend.photos.loader import BadPath
    from ..backend.photos.walk import expand_paths

    return sum(1 for item in expand_paths([folder]) if not isinstance(item, BadPath))


class PhotoList(QListWidget):
    """The photos and folders to run, by name (the full path in each tooltip), each folder with the number
    of photos found in it; accepts drops from the file manager and the QGIS Browser."""

    pathsDropped = pyqtSignal(list)  # noqa: N815 - Qt's naming for signals
    countsChanged = pyqtSignal()  # noqa: N815
    _counted = pyqtSignal(str, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.counts: dict[str, int | None] = {}  # folder -> photos in it (None while counting)
        self._counted.connect(self._set_count)

    def paths(self) -> list[str]:
        return [self.item(i).data(PATH_ROLE) for i in range(self.count())]

    def add_path(self, path: str) -> None:
        item = QListWidgetItem()
        item.setData(PATH_ROLE, path)
        item.setToolTip(tooltip(path))
        folder = Path(path).is_dir()
        item.setIcon(QgsApplication.getThemeIcon("/mIconFolder.svg" if folder else "/mIconFile.svg"))
        self.addItem(item)
        if folder:
            self.counts[path] = None
            threading.Thread(target=lambda: self._counted.emit(path, _count_folder(path)), daemon=True).start()
        self._label(item)

    def _label(self, item: QListWidgetItem) -> None:
        path = item.data(PATH_ROLE)
        name = Path(path).name or path
        if path in self.counts:
            count = self.counts[path]
            found = "counting photos…" if count is None else f"{count} photo{'s' if count != 1 else ''}"
            item.setText(f"{name}/ — {found}")
        else:
            item.setText(name)

    def _set_count(self, path: str, count: int) -> None:
        if path not in self.counts:
            return  # removed meanwhile
        self.counts[path] = count
        for i in range(self.count()):
            if self.item(i).data(PATH_ROLE) == path:
                self._label(self.item(i))
        self.countsChanged.emit()

    def total(self) -> int | None:
        """Photos named, folders counted; None while a folder is still being counted."""
        total = 0
        for path in self.paths():
            if path in self.counts:
                if self.counts[path] is None:
                    return None
                total += self.counts[path]
            else:
                total += 1
        return total

    def forget(self, path: str) -> None:
        self.counts.pop(path, None)

    def dragEnterEvent(self, event):  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() or QgsMimeDataUtils.isUriList(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event):  # noqa: N802 - Qt API
        event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802 - Qt API
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if QgsMimeDataUtils.isUriList(event.mimeData()):
            paths += [uri.uri for uri in QgsMimeDataUtils.decodeUriList(event.mimeData()) if Path(uri.uri).exists()]
        self.pathsDropped.emit(paths)
        event.acceptProposedAction()
