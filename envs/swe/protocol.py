"""The mini-swe-agent-plus reply and observation format the SWE environment speaks.

A reply is a ``THOUGHT:`` section followed by exactly one fenced ```bash block holding one
command (which may chain steps with ``&&`` / ``||``); anything else is a format error, which
the environment answers with a corrective observation (it costs a step, never an exception).
An observation is ``<returncode>N</returncode>`` plus the command's output (stdout and stderr
merged); output of 10,000 characters or more keeps its first and last 5,000 characters around
a warning and the count of elided characters. A command whose output starts with a
final-output marker submits the episode.

Everything here is pure string work: the environment (``env.py``), the scripted expert
(``expert.py``) and the tests share it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
MINI_MARKER = "MINI_SWE_AGENT_FINAL_OUTPUT"   # mini-swe-agent's marker: Klear's SFT data uses it
FINAL_MARKERS = (SUBMIT_MARKER, MINI_MARKER)
SUBMIT_COMMAND = f"echo {SUBMIT_MARKER}"
MAX_OUTPUT_CHARS = 10_000   # output this long or longer is cut
HEAD_CHARS = TAIL_CHARS = 5_000

# mini-swe-agent's action regex: the block must open with ```bash and a newline and close with a
# fence at the start of a line.
_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)
_THOUGHT = re.compile(r"^\s*THOUGHT:", re.MULTILINE)

_FORMAT_HELP = f"""Every reply must be a THOUGHT section followed by exactly ONE bash code block with ONE command \
(join several steps with && or ||), like this:

THOUGHT: what I know so far, and what the command below will tell me or change.

```bash
your_command_here
```

To submit your work when you are done, reply with the command `{SUBMIT_COMMAND}` alone."""


@dataclass(frozen=True)
class Reply:
    """A parsed assistant reply: ``command`` when well formed, else ``error`` says why not."""

    thought: str
    command: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_reply(text: object) -> Reply:
    """Split a reply into its THOUGHT and its single bash command; never raises."""
    if not isinstance(text, str):
        return Reply("", None, "the reply is not text")
    blocks = list(_BASH_BLOCK.finditer(text))
    if not blocks:
        return Reply("", None, "found no ```bash code block")
    if len(blocks) > 1:
        return Reply("", None, f"found {len(blocks)} ```bash code blocks; give exactly one")
    head = text[:blocks[0].start()]
    thought = _THOUGHT.search(head)
    if thought is None:
        return Reply("", None, "the reply has no THOUGHT: section before the code block")
    command = blocks[0].group(1).strip()
    if not command:
        return Reply("", None, "the ```bash code block is empty")
    return Reply(head[thought.end():].strip(), command)


def format_reply(thought: str, command: str) -> str:
    """An assistant reply in the protocol's shape (the expert writes its turns with this)."""
    return f"THOUGHT: {thought.strip()}\n\n```bash\n{command.strip()}\n```"


def format_error(reason: str) -> str:
    """The observation answering a malformed reply."""
    return f"Format error: {reason}.\n\n{_FORMAT_HELP}"


def _body(output: str, total: int | None = None) -> str:
    """The output part: whole below ``MAX_OUTPUT_CHARS``, else head and tail around a warning
    (mini-swe-agent-plus's template, in our words). ``total`` is the real length when
    ``output`` is already only the head and tail (``HEAD_CHARS + TAIL_CHARS`` characters)."""
    total = len(output) if total is None else total
    if total < MAX_OUTPUT_CHARS:
        end = "" if output == "" or output.endswith("\n") else "\n"
        return f"<output>\n{output}{end}</output>"
    elided = total - HEAD_CHARS - TAIL_CHARS
    return ("<warning>\nThe output of your last command was too long "
            f"({total} characters). Try a command that prints less: view files in parts "
            "(sed -n 'A,Bp', head, tail), search with a narrower pattern, or redirect the output "
            "to a file and grep it.\n</warning>\n"
            f"<output_head>\n{output[:HEAD_CHARS]}\n</output_head>\n"
            f"<elided_chars>\n{elided} characters elided\n</elided_chars>\n"
            f"<output_tail>\n{output[-TAIL_CHARS:]}\n</output_tail>")


def format_observation(returncode: int, output: str, total: int | None = None) -> str:
    """The observation of a command that finished (whatever its exit code); ``total`` as in
    ``_body``."""
    return f"<returncode>{returncode}</returncode>\n{_body(output, total)}"


def format_timeout(command: str, output: str, timeout_s: float, total: int | None = None) -> str:
    """The observation of a command killed at the per-command timeout; the episode goes on."""
    return (f"The last command <command>{command}</command> timed out after {timeout_s:g} seconds "
            f"and has been killed. Its output so far:\n{_body(output, total)}\n"
            "Try another command; do not run interactive programs or anything that waits for "
            "input, and run long jobs on a smaller scale.")


def is_submission(output: str) -> bool:
    """Whether a command's output starts with a final-output marker (its first line)."""
    stripped = output.lstrip()
    first = stripped.splitlines()[0].strip() if stripped else ""
    return first in FINAL_MARKERS
