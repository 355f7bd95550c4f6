"""One command from two images to a signed, verified ``NAME.sysext.raw`` (``sysextant diff BASE
DERIVED --build NAME``): the job Kairos' ``auroraboot sysext`` does, done on the whole difference
by content rather than the last layer, with whiteouts applied, hardlinks, owners and xattrs kept.

No spec is needed: the extension's content is what the derived image adds or changes over its
base under the hierarchies the base merges (:mod:`..sizing.imagediff`); it is packed, hashed,
signed and verified exactly like a spec's extension (:mod:`.sysext`, :mod:`.verify`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import ensure_folder
from ..errors import UserError
from ..keys import Signer
from ..progress import Reporter
from ..sizing.imagediff import diff_content, source_bytes
from ..sizing.plan import ExtensionPlan
from ..spec.model import ExtensionSpec, ImageDiff
from .sysext import build_extension, collect_entries
from .verify import VerifyReport, verify_artefact


@dataclass
class FromImages:
    path: Path
    entries: int
    bytes: int
    root_hash: str
    signed: bool
    check: VerifyReport
    warnings: list[str] = field(default_factory=list)


def build_from_images(base: Path, image: Path, ext: ExtensionSpec, out_dir: Path, *, signer: Signer | None,
                      cert: Path | None = None, platform: str | None = None,
                      reporter: Reporter | None = None) -> FromImages:
    """Build ``out_dir/NAME.sysext.raw`` from what ``image`` adds over ``base``; UserError (naming
    every problem) when the difference cannot be a system extension. Every event of the work
    (the images' difference, the packing, dm-verity) names the artefact ``ext.name``."""
    ext.from_images = ImageDiff(image=image, base=base)
    if reporter is not None:
        reporter = reporter.for_artefact(ext.name)
    src, problems, warnings = diff_content(base, image, ext, platform=platform, reporter=reporter)
    if problems or src is None:
        raise UserError(f"{image} over {base} cannot be extension {ext.name}:\n  " + "\n  ".join(problems))
    ensure_folder(out_dir, out_dir / ext.image_name)
    plan = ExtensionPlan(ext.name, src.marks, src.selected, len(src.selected), source_bytes(src), 0)
    entries = collect_entries(src.index, plan, ext)
    img = build_extension(src.index, plan, ext, out_dir, signer=signer, reporter=reporter, entries=entries)
    check = verify_artefact(img.path, cert)
    return FromImages(img.path, plan.entries, plan.bytes, img.root_hash, img.signed, check, warnings)
