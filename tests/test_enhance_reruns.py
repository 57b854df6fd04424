"""What a second enhance.py run into the same output folder finds, and the folders it must refuse: an audit of
killed, repeated and containerized runs found each case below."""

import os
import pathlib
import shutil

import pydicom
import pytest
from dicom_fixtures import image_dataset, textured, uid, write_mr_series
from test_enhance import run

from breastmri import files
from breastmri.enhance import pipeline
from breastmri.restore.predict import EnhanceError


def series_numbers(out):
    """{output SeriesInstanceUID: SeriesNumber} of every enhanced file under out."""
    numbers = {}
    for path in out.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        numbers[ds.SeriesInstanceUID] = int(ds.SeriesNumber)
    return numbers


def test_leftovers_of_an_earlier_process_with_this_process_id_are_cleared(identity, tmp_path, monkeypatch):
    """In a container every run is process 1: what a killed run left carries the id of the run that finds it. The
    old series an --overwrite moved aside is put back, the half-written one and a half-written preview removed."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    out = tmp_path / "out"
    first = run(identity, tmp_path / "in", out, preview=True)
    folder = out / first["series"][0]["folder"]
    pid = os.getpid()
    folder.rename(folder.with_name(f"{pipeline.TMP_PREFIX}{pid}{pipeline.SWAPPED}{folder.name}"))
    (out / f"{pipeline.TMP_PREFIX}{pid}-{folder.name}").mkdir()
    (folder.parent / f"{files.TMP_PREFIX}{pid}-{folder.name}.png").write_bytes(b"half a png")
    monkeypatch.setattr(files, "_GIVEN", set())  # a new process: it gave out none of these names
    again = run(identity, tmp_path / "in", out)
    assert again["series_skipped"] == {"exists": 1} and folder.is_dir()
    assert not [p for p in out.rglob(".tmp-*")]


def test_ctrl_c_while_an_overwrite_deletes_the_old_series_leaves_none_of_it(identity, tmp_path, monkeypatch):
    """Ctrl-C while --overwrite deleted the old series (moved aside once the new one was in place) left half of it
    in a hidden folder until a later run: files with the new series' UIDs beside it. The interrupted run finishes
    the deletion before it stops."""
    write_mr_series(tmp_path / "in", "P1", n_slices=3, rows=16, cols=16)
    out = tmp_path / "out"
    run(identity, tmp_path / "in", out)
    remove = pipeline.remove_path

    def interrupted(path):
        path = pathlib.Path(path)
        if pipeline.SWAPPED in path.name and path.is_dir() and not interrupted.done:
            interrupted.done = True
            next(path.glob("*.dcm")).unlink()  # one file gone, then Ctrl-C
            raise KeyboardInterrupt
        return remove(path)

    interrupted.done = False
    monkeypatch.setattr(pipeline, "remove_path", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(identity, tmp_path / "in", out, overwrite=True)
    assert interrupted.done and not [p for p in out.rglob("*") if pipeline.SWAPPED in p.name]
    assert len(list(out.rglob("*.dcm"))) == 3


def test_a_series_that_fails_to_write_leaves_no_preview(identity, tmp_path, monkeypatch):
    """The preview is written before its series is renamed into place (so a run killed between the two redoes
    both); a series that then fails takes its preview with it."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_series", full_disk)
    summary = run(identity, tmp_path / "in", tmp_path / "out", preview=True)
    assert summary["series_skipped"] == {"write failed": 1}
    assert not list((tmp_path / "out").rglob("*.png"))
    monkeypatch.undo()
    summary = run(identity, tmp_path / "in", tmp_path / "out", preview=True)
    assert summary["series_done"] == 1 and len(list((tmp_path / "out").rglob("*.png"))) == 1


@pytest.mark.parametrize("where", ["the input", "its parent"])
def test_an_output_folder_that_holds_the_input_is_refused(identity, tmp_path, where):
    """Everything under the output folder is skipped as output, so one that holds the input would enhance
    nothing and say so only in its counts."""
    write_mr_series(tmp_path / "scans", "P1", n_slices=2, rows=16, cols=16)
    out = tmp_path / "scans" if where == "the input" else tmp_path
    with pytest.raises(EnhanceError, match="holds --input"):
        run(identity, tmp_path / "scans", out)


def test_an_output_folder_that_cannot_be_made_is_an_error(identity, tmp_path):
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    (tmp_path / "a file").write_text("")
    with pytest.raises(EnhanceError, match="--output"):
        run(identity, tmp_path / "in", tmp_path / "a file" / "out")


def test_series_numbers_stay_unique_across_runs_into_one_folder(identity, tmp_path):
    """Two series of one study, both numbered 1 (scanners repeat numbers); the one numbered last in a run of both
    enhanced alone first, then both: no two enhanced series of the study share a number, the earlier output keeps
    its own."""
    study = uid("study")
    for number in (1, 2):
        folder = tmp_path / "in" / f"s{number}"
        folder.mkdir(parents=True)
        for z in range(2):
            ds = image_dataset(textured(500 + 10 * z), patient_id="P1", study_uid=study,
                               series_uid=uid("series", number), instance=z + 1, position=3.0 * z)
            ds.SeriesNumber = 1
            ds.save_as(folder / f"IM{z}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    later = max((1, 2), key=lambda number: str(uid("series", number)))  # a run numbers a study's series in uid order
    alone = run(identity, tmp_path / "in" / f"s{later}", out)
    assert series_numbers(out) == {alone["series"][0]["output_series_uid"]: 1001}
    both = run(identity, tmp_path / "in", out)
    assert both["series_done"] == 1 and both["series_skipped"] == {"exists": 1}
    numbers = series_numbers(out)
    assert len(numbers) == 2 and len(set(numbers.values())) == 2, numbers
    assert numbers[alone["series"][0]["output_series_uid"]] == 1001


def test_a_time_point_enhanced_alone_is_not_the_one_enhanced_within_its_dynamic(identity, tmp_path):
    """A DCE stored one series per time point: a member enhanced on its own saw one frame, within the dynamic all
    of them, so their outputs are different series (UIDs), and a later run of the whole dynamic into the same
    folder writes every member instead of taking the lone one for done."""
    for t in range(3):
        folder = tmp_path / "in" / f"t{t}"
        folder.mkdir(parents=True)
        for z in range(2):
            ds = image_dataset(textured(500 + 50 * t), patient_id="P1",
                               series_uid=uid("dyn", t), instance=z + 1, position=3.0 * z,
                               description="ax dyn", acquisition_time=f"1000{t}0")
            ds.SeriesNumber = 10 + t
            ds.save_as(folder / f"IM{z}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    alone = run(identity, tmp_path / "in" / "t0", out)
    whole = run(identity, tmp_path / "in", out)
    assert whole["series_done"] == 3, whole["series_skipped"]
    assert alone["series"][0]["output_series_uid"] not in {r["output_series_uid"] for r in whole["series"]}


def test_something_else_in_a_series_place_is_not_taken_for_it(identity, tmp_path):
    """A file or a folder without enhance.json where a series would go is no finished series: it is reported
    (nothing of it touched), and --overwrite replaces it and leaves nothing of it behind."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    out = tmp_path / "out"
    first = run(identity, tmp_path / "in", out)
    folder = out / first["series"][0]["folder"]
    files.remove_path(folder)
    folder.write_text("a note someone left")
    again = run(identity, tmp_path / "in", out)
    assert again["series_skipped"] == {"output path taken": 1} and folder.read_text() == "a note someone left"
    replaced = run(identity, tmp_path / "in", out, overwrite=True)
    assert replaced["series_done"] == 1 and (folder / pipeline.MARKER).is_file()
    assert not [p for p in out.rglob(".tmp-*")]


def test_ctrl_c_ends_enhance_in_one_line_that_says_how_to_go_on(identity_run, tmp_path, monkeypatch, capsys):
    """Ctrl-C printed a KeyboardInterrupt traceback; it says what is kept and how to go on, exit status 130, after
    the series being written when it came left nothing behind (test above)."""
    import enhance

    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_series", interrupted)
    with pytest.raises(SystemExit) as exit_:
        enhance.main(["--model", str(identity_run), "--input", str(tmp_path / "in"),
                      "--output", str(tmp_path / "out")])
    assert exit_.value.code == 130 and "run the same command again" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_an_input_without_mr_series_is_an_error(identity, tmp_path):
    """A wrong --input (a folder of CT, or of nothing DICOM) ended with "enhanced 0 series" and exit status 0,
    where preprocessing.py stops with the reason: enhance.py does too."""
    from dicom_fixtures import bundled

    (tmp_path / "ct").mkdir()
    shutil.copy(bundled("CT_small.dcm"), tmp_path / "ct" / "ct.dcm")
    with pytest.raises(EnhanceError, match="no MR series.*modality CT: 1"):
        run(identity, tmp_path / "ct", tmp_path / "out")
