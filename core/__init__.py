"""Sysextant engine: spec, tree index, size model, image writers, signing. Never imports Textual."""

from .spec import load as _load  # noqa: E402
from .tree import oci as _oci  # noqa: E402

# os.root may name a container image: the spec layer asks the tree layer to open it (the spec
# layer cannot import the tree layer; the engine wires them here, once)
_load.IMAGE_OPENER = _oci.open_for_spec
