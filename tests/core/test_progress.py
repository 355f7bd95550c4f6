"""Progress events name their artefact and stage (the engine says it; no front end parses task
names), and a child reporter shares its parent's cancel flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from sysextant.core.demo import create_demo
from sysextant.core.errors import Cancelled
from sysextant.core.progress import Progress, Reporter


def test_for_artefact_stamps_artefact_and_stage_and_shares_cancel() -> None:
    events: list[Progress] = []
    parent = Reporter(events.append)
    uki = parent.for_artefact("uki")
    uki("uki: assemble: write", 1, 2)
    uki("initrd: compress", 3, 4)
    uki.log("uki", "building uki.efi")
    parent.for_artefact("verify")("verify", 0, 2, "files")
    parent.for_artefact("diff").for_artefact("docs")("docs: pack", 1, 2)  # the inner artefact's work
    assert [(e.artefact, e.stage) for e in events] == [("uki", "assemble: write"), ("uki", "initrd: compress"),
                                                     ("uki", ""), ("verify", "verify"), ("docs", "pack")]
    assert [e.task for e in events] == ["uki: assemble: write", "initrd: compress", "uki", "verify", "docs: pack"]
    parent.cancel()
    with pytest.raises(Cancelled):
        uki.check()


def test_every_event_of_a_build_names_its_artefact(tmp_path: Path) -> None:
    from sysextant.core.build.pipeline import build
    from sysextant.core.spec.load import load_spec

    spec = load_spec(create_demo(tmp_path / "demo", scale=0.02))
    events: list[Progress] = []
    report = build(spec, only=["firmware"], reporter=Reporter(events.append))
    assert report.ok
    work = [e for e in events if e.kind != "step"]
    assert work and all(e.artefact in ("firmware", "verify") for e in work), \
        {(e.task, e.artefact) for e in work if e.artefact not in ("firmware", "verify")}
    assert {e.stage for e in work if e.artefact == "firmware" and e.total} >= {"pack", "verity"}
