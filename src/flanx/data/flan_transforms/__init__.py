"""Row transforms of the FLAN collection's task cards, one module per group of datasets.

Importing this package registers every transform in `flanx.data.transforms.ROW_TRANSFORMS`.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
