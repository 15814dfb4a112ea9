"""posttrain.reporting.write_report: a regenerated report keeps its hand-written notes block."""
import pytest

from posttrain.reporting import (NOTES_BEGIN, NOTES_END, ReportNotesError, report_notes, report_notes_problem,
                                 write_json, write_report)


def test_new_file_without_notes(tmp_path):
    path = write_report(tmp_path / "r.md", "# Title\n\n| a |\n")
    assert path.read_text() == "# Title\n\n| a |\n"
    assert report_notes(path) == "" and report_notes(tmp_path / "missing.md") == ""


def test_notes_survive_regeneration_and_stale_tables_do_not(tmp_path):
    path = tmp_path / "r.md"
    notes = f"{NOTES_BEGIN}\n> **Result.** B beats A by 0.1.\n{NOTES_END}"
    path.write_text(f"# Old title\n\n{notes}\n\nold table\n")
    write_report(path, "# New title\n\nnew table")
    assert path.read_text() == f"# New title\n\n{notes}\n\nnew table\n"
    write_report(path, "# New title\n\nnewer table\n")  # idempotent: one block, never duplicated
    assert path.read_text() == f"# New title\n\n{notes}\n\nnewer table\n"
    assert report_notes(path) == notes


def test_a_title_only_report_keeps_notes(tmp_path):
    path = tmp_path / "r.md"
    path.write_text(f"# T\n{NOTES_BEGIN}\nx\n{NOTES_END}\n")
    write_report(path, "# T")
    assert path.read_text() == f"# T\n\n{NOTES_BEGIN}\nx\n{NOTES_END}\n\n"


@pytest.mark.parametrize("body", [f"{NOTES_BEGIN}\nx\n", f"x\n{NOTES_END}\n", f"{NOTES_END}\nx\n{NOTES_BEGIN}\n",
                                  f"{NOTES_BEGIN}\n{NOTES_END}\n{NOTES_BEGIN}\n{NOTES_END}\n"])
def test_malformed_block_is_refused_and_the_file_kept(tmp_path, body):
    path = tmp_path / "r.md"
    path.write_text("# T\n" + body)
    with pytest.raises(ReportNotesError, match="r.md: expected one"):
        write_report(path, "# T\n\nnew\n")
    assert path.read_text() == "# T\n" + body
    assert report_notes_problem(path).startswith(f"{path}: expected one")  # the scripts' up-front check


def test_problem_is_none_for_good_or_missing_files(tmp_path):
    path = tmp_path / "r.md"
    assert report_notes_problem(path) is None
    path.write_text(f"# T\n{NOTES_BEGIN}\nx\n{NOTES_END}\n")
    assert report_notes_problem(path) is None


def test_writes_leave_no_temporary_file(tmp_path):
    write_json(tmp_path / "s.json", {"a": 1})
    write_report(tmp_path / "r.md", "# T")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md", "s.json"]
    assert (tmp_path / "s.json").read_text() == '{\n  "a": 1\n}\n'
