"""Reading a boot off the serial console: which stage was reached, with the line that proves it
and when.

The evidence is what each component prints on the serial console of QEMU + OVMF (seen with
Debian 12's OVMF, systemd-stub 252, Linux 6.1 and systemd 252):

- firmware: OVMF's boot manager logs ``BdsDxe: loading Boot0001 ...`` then ``BdsDxe: starting
  Boot0001 ...`` once LoadImage() accepted the file; a Secure Boot refusal is ``BdsDxe: failed to
  load Boot0001 ...: Access Denied`` (or ``Security Violation``);
- stub: the kernel's own EFI stub inside the UKI, started by systemd-stub, prints ``EFI stub:
  UEFI Secure Boot is enabled.`` and ``EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID
  device path`` (the initrd systemd-stub handed over);
- kernel: ``Linux version ...``, the kernel's first line;
- init: ``Run /init as init process`` (kernel, KERN_INFO), and ``systemd 252 running in system
  mode`` when /init is systemd; ``Failed to execute /init``, ``No working init found`` or
  ``Kernel panic - not syncing`` say it did not;
- target: systemd's status line ``Reached target Multi-User System`` (or ``Graphical
  Interface``);
- checks of the check build: lines ``sysextant-check: NAME: ok|FAIL|skip: DETAIL`` written to
  /dev/console by its unit, ``sysextant-check: end`` after the last; ``NAME: value: DETAIL``
  is a measurement the host judges (PCR 11); ``sysextant-log: TEXT`` lines are the guest's
  evidence (``systemd-sysext status``, the merge's journal) kept for the report.

A stage that was not printed but that a later stage proves (the firmware accepted the UKI if
the kernel printed its banner) passes as "implied" with the later line as evidence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PASSED, FAILED, PENDING, SKIPPED = "passed", "failed", "pending", "skipped"
CHECK_PREFIX = "sysextant-check:"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")
_CHECK = re.compile(re.escape(CHECK_PREFIX) + r"\s*([A-Za-z0-9_.-]+):\s*(ok|FAIL|skip|value):?\s?(.*)$")
LOG_PREFIX = "sysextant-log:"
_CHECK_END = re.compile(re.escape(CHECK_PREFIX) + r"\s*end\b")
#: lines that end the boot whatever stage it was in (the first pending stage fails with them)
FATAL = (
    re.compile(r"Kernel panic - not syncing.*"),
    re.compile(r"Access Denied|Security Violation"),
)
POWER_OFF = re.compile(r"reboot: Power down|reboot: System halted|reboot: Restarting system")


@dataclass
class Stage:
    """One step of the boot and what the console showed for it."""

    key: str
    title: str
    status: str = PENDING
    evidence: str = ""  # the console line that decided it
    seconds: float | None = None  # since the VM started
    note: str = ""

    def to_json(self) -> dict:
        return {"stage": self.key, "title": self.title, "status": self.status, "evidence": self.evidence,
                "seconds": None if self.seconds is None else round(self.seconds, 2), "note": self.note}


@dataclass(frozen=True)
class Rule:
    key: str
    title: str
    passes: tuple[re.Pattern[str], ...]
    fails: tuple[re.Pattern[str], ...] = ()


BOOT_RULES = (
    Rule("firmware", "firmware accepted the UKI", (re.compile(r"BdsDxe: starting Boot\w+.*"),),
         (re.compile(r"BdsDxe: failed to load Boot\w+.*"),)),
    Rule("stub", "stub started", (re.compile(r"EFI stub: .*"),)),
    Rule("kernel", "kernel started", (re.compile(r"Linux version \d.*"),)),
    Rule("init", "/init ran", (re.compile(r"Run /init as init process.*"), re.compile(r"systemd \d+.* running in system mode.*")),
         (re.compile(r"Failed to execute /init.*"), re.compile(r"No working init found.*"))),
    Rule("target", "a target reached",
         (re.compile(r"Reached target .*(Multi-User System|Graphical Interface|multi-user\.target|graphical\.target).*"),)),
)
SECURE_BOOT_LINE = re.compile(r"EFI stub: UEFI Secure Boot is enabled")


def clean(raw: str) -> str:
    """A console line without terminal escapes, carriage returns and padding."""
    line = _ANSI.sub("", raw)
    if "\r" in line:
        line = line.rstrip("\r").split("\r")[-1] or line.replace("\r", "")
    return "".join(ch for ch in line if ch == "\t" or ch >= " ").strip()


@dataclass
class Watcher:
    """Feeds console lines through the stage rules. ``checks``: the names of the check build's
    checks, each a stage after the target; ``secure_boot``: the stub must report Secure Boot on."""

    checks: Iterable[tuple[str, str]] = ()
    secure_boot: bool = True
    #: a verdict for a ``value`` line: detail -> (passed, note)
    judges: dict[str, Callable[[str], tuple[bool, str]]] = field(default_factory=dict)
    #: stages that cannot be proven in this VM: key -> why (they start as skipped)
    skip: dict[str, str] = field(default_factory=dict)
    stages: list[Stage] = field(init=False)
    powered_off: bool = False
    checks_ended: bool = False
    fatal: str = ""  # the line that ended the boot early, if any
    secure_boot_seen: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    guest_log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [Stage(r.key, r.title) for r in BOOT_RULES]
        self.stages += [Stage(f"check:{name}", title) for name, title in self.checks]
        self._rules = {r.key: r for r in BOOT_RULES}
        for st in self.stages:
            if st.key in self.skip:
                st.status, st.note = SKIPPED, self.skip[st.key]

    def stage(self, key: str) -> Stage:
        return next(s for s in self.stages if s.key == key)

    def feed(self, raw: str, seconds: float) -> list[Stage]:
        """One console line at ``seconds`` since the VM started; returns the stages it decided."""
        line = clean(raw)
        if not line:
            return []
        self.lines.append((seconds, line))
        changed: list[Stage] = []
        if SECURE_BOOT_LINE.search(line):
            self.secure_boot_seen = line
        if POWER_OFF.search(line):
            self.powered_off = True
        if LOG_PREFIX in line:
            self.guest_log.append(line.split(LOG_PREFIX, 1)[1].strip())
            return changed
        m = _CHECK.search(line)
        if m:
            name, verdict, detail = m.group(1), m.group(2), m.group(3).strip()
            key = f"check:{name}"
            st = next((s for s in self.stages if s.key == key), None)
            if st is None:  # a check the host did not announce: shown, and it counts
                st = Stage(key, name)
                self.stages.append(st)
            if st.status == PENDING:
                if verdict == "value":
                    judge = self.judges.get(name)
                    passed, note = judge(detail) if judge else (True, detail)
                    st.status = PASSED if passed else FAILED
                else:
                    st.status, note = {"ok": PASSED, "FAIL": FAILED, "skip": SKIPPED}[verdict], detail
                st.evidence, st.seconds, st.note = line, seconds, note
                changed.append(st)
            return changed
        if _CHECK_END.search(line):
            self.checks_ended = True
            for st in self.stages:
                if st.key.startswith("check:") and st.status == PENDING:
                    st.status, st.evidence, st.seconds = FAILED, line, seconds
                    st.note = "the guest's check unit ended without reporting it"
                    changed.append(st)
            return changed
        for i, st in enumerate(self.stages):
            rule = self._rules.get(st.key)
            if rule is None or st.status != PENDING:
                continue
            if any(p.search(line) for p in rule.fails):
                st.status, st.evidence, st.seconds = FAILED, line, seconds
                if st.key == "firmware" and re.search(r"Access Denied|Security Violation", line):
                    st.note = "Secure Boot refused it: the UKI is not signed by a certificate in db"
                self.fatal = self.fatal or line
                changed.append(st)
                break
            if any(p.search(line) for p in rule.passes):
                for earlier in self.stages[:i]:  # what this line proves happened before it
                    if earlier.status == PENDING and earlier.key in self._rules:
                        earlier.status, earlier.evidence, earlier.seconds = PASSED, line, seconds
                        earlier.note = f"implied by the {st.key} stage (not printed itself)"
                        changed.append(earlier)
                st.status, st.evidence, st.seconds = PASSED, line, seconds
                if st.key == "stub" and self.secure_boot and not self.secure_boot_seen:
                    st.note = "Secure Boot not reported yet"
                changed.append(st)
                break
        if not changed and any(p.search(line) for p in FATAL):
            self.fatal = line
            st = self.first_pending()
            if st is not None:
                st.status, st.evidence, st.seconds = FAILED, line, seconds
                changed.append(st)
        return changed

    def first_pending(self) -> Stage | None:
        return next((s for s in self.stages if s.status == PENDING), None)

    @property
    def boot_done(self) -> bool:
        """The boot stages all passed or were skipped (the check stages may still be running)."""
        return all(s.status in (PASSED, SKIPPED) for s in self.stages if s.key in self._rules)

    @property
    def finished(self) -> bool:
        """Nothing more to wait for: a fatal line, a failed boot stage, power-off, or every stage decided."""
        if self.fatal or self.powered_off:
            return True
        if any(s.status == FAILED for s in self.stages if s.key in self._rules):
            return True
        return all(s.status != PENDING for s in self.stages)

    def finish(self, why: str, seconds: float) -> None:
        """The VM stopped or timed out: every stage still pending fails with ``why``; the stub
        stage fails if Secure Boot was required and never reported."""
        stub = self.stage("stub")
        if self.secure_boot and stub.status == PASSED and not self.secure_boot_seen:
            stub.status = FAILED
            stub.note = "the kernel's EFI stub never reported 'UEFI Secure Boot is enabled'"
        elif stub.status == PASSED and self.secure_boot_seen:
            stub.note = "UEFI Secure Boot is enabled"
        for st in self.stages:
            if st.status == PENDING:
                st.status, st.note = FAILED, f"not reached ({why})"
                st.seconds = None

    @property
    def ok(self) -> bool:
        return all(s.status in (PASSED, SKIPPED) for s in self.stages) and not self.fatal

    def tail(self, n: int = 40) -> list[str]:
        return [line for _, line in self.lines[-n:]]
