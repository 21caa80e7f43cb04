"""A one-file HTML report of an eva run, and a side-by-side comparison of two runs.

The report is a single self-contained file (figures as inline PNG data URIs, CSS inline,
no script, nothing fetched) because it gets attached to tickets, mailed and opened from
object storage, where relative image paths and CDNs break. It reads only the run
directory, so it works on a finished run, a running one and one that stopped half-way;
whatever is missing is named instead of failing the whole report.

Prompts, evolver replies and ids come from users and from models: every piece of text
taken from the run goes through ``html.escape`` and never into markup unescaped.
matplotlib is imported inside the functions that draw (and pyplot never), so importing
this module stays cheap and does not change the caller's matplotlib backend.
"""

from eva_runtime.report.compare import write_compare
from eva_runtime.report.run_report import HEAD_TO_HEAD_NOTE, write_report

__all__ = ["HEAD_TO_HEAD_NOTE", "write_compare", "write_report"]
