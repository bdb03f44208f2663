"""preprocess.py: CSV validation, the reference-standard columns (the same under every uncertainty
policy), CheXpert's hierarchy (--label_hierarchy), path handling and real-scale counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import preprocess
from config import Config
from conftest import ROOT, make_root, row, shared
from cxr.atomic import write_csv_atomic
from cxr.cli import parse_args
from cxr.data.adapters import HIERARCHY, apply_hierarchy
from cxr.data.chexpert import PATIENT_STUDY, extract_patient_study
from cxr.data.labels import LABELS, parse_raw_labels, raw_column, training_targets
from cxr.errors import ConfigError, PipelineError


def run(root, tmp_path, **overrides):
    cfg = Config(data_root=str(root), data_dir=str(tmp_path / "data"), **overrides)
    preprocess.main(cfg)
    out = cfg.processed_dir
    return (pd.read_csv(out / "train.csv"), pd.read_csv(out / "valid.csv"),
            json.loads((out / "stats.json").read_text()))


def bad_input_root(tmp_path, csv_name):
    """A data root whose train.csv is one of ../shared/data/bad-inputs/csv (valid.csv is fine)."""
    source = shared(f"bad-inputs/csv/{csv_name}")
    root = make_root(tmp_path, [row("train", 1)], [row("valid", 9)], images=False)
    shutil.copyfile(source, root / "train.csv")
    return root


@pytest.mark.parametrize("csv_name, expected", [
    ("header_only.csv", "no data rows"),
    ("missing_column.csv", "lacks required column(s) ['Frontal/Lateral']"),
    ("bad_label_values.csv", "line 2, column 'Cardiomegaly': '2.0'"),
    ("path_traversal.csv", "line 2, column 'Path': 'CheXpert-v1.0-small/../../../../etc/passwd'"),
    ("duplicate_rows.csv", "share a Path"),
    ("not_csv.csv", "not a UTF-8 text CSV"),
])
def test_bad_csvs_give_clear_errors(tmp_path, csv_name, expected):
    root = bad_input_root(tmp_path, csv_name)
    with pytest.raises(PipelineError) as error:
        run(root, tmp_path, check_images=False)
    assert expected in str(error.value)
    assert "train.csv" in str(error.value)  # the message names the file


def test_bad_label_values_lists_every_kind(tmp_path):
    root = bad_input_root(tmp_path, "bad_label_values.csv")
    with pytest.raises(PipelineError) as error:
        run(root, tmp_path, check_images=False)
    for value in ("'2.0'", "'abc'", "'yes'"):
        assert value in str(error.value)


def test_absolute_path_is_rejected(tmp_path):
    root = make_root(tmp_path, [row("train", 1), {**row("train", 2), "Path": "/etc/hostname"}],
                     [row("valid", 9)], images=False)
    with pytest.raises(PipelineError, match="line 3, column 'Path': '/etc/hostname' leaves"):
        run(root, tmp_path, check_images=False)


def test_missing_image_is_an_error_naming_file_and_line(tmp_path):
    root = bad_input_root(tmp_path, "missing_image.csv")
    with pytest.raises(PipelineError, match=r"line 2: .*patient99999.*--missing_images skip"):
        run(root, tmp_path)


def test_missing_images_can_be_skipped_and_counted(tmp_path):
    train = [row("train", 1), row("train", 2), row("train", 3)]
    root = make_root(tmp_path, train, [row("valid", 9)])
    (root / "train/patient00002/study1/view1_frontal.jpg").unlink()
    train_out, _, stats = run(root, tmp_path, missing_images="skip")
    assert len(train_out) == 2 and stats["train"]["missing_images_skipped"] == 1
    skipped = pd.read_csv(tmp_path / "data/processed/missing_images_train.csv")
    assert skipped["Path"].tolist() == [train[1]["Path"]] and skipped["line"].tolist() == [3]


def test_bom_and_crlf_parse(tmp_path):
    root = bad_input_root(tmp_path, "bom_crlf.csv")
    train, _, _ = run(root, tmp_path, check_images=False)
    assert list(train.columns[:5]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert train["Path"].iloc[0].startswith("CheXpert-v1.0-small/train/patient00075")
    assert not train["Support Devices"].isna().any()


def test_reference_columns_views_patients_and_raw_columns(tmp_path):
    train = [row("train", 1, Cardiomegaly="-1.0", Edema="1.0"),
             row("train", 1, study=2, view="Lateral", Cardiomegaly="1.0"),
             row("train", 2, Cardiomegaly="0.0", Edema="-1.0")]
    root = make_root(tmp_path, train, [row("valid", 9, Edema="1.0")])
    processed, valid, stats = run(root, tmp_path)
    assert processed["Path"].tolist() == [train[0]["Path"], train[2]["Path"]]  # lateral dropped
    assert processed["patient_id"].tolist() == ["patient00001", "patient00002"]
    assert processed["study_id"].tolist() == ["patient00001/study1", "patient00002/study1"]
    # the reference standard: uncertain blank (masked), whatever the policy
    assert processed["Cardiomegaly"].isna().tolist() == [True, False]
    assert processed["Cardiomegaly"].iloc[1] == 0 and processed["Edema"].iloc[0] == 1
    assert np.isnan(processed["Edema"].iloc[1])
    assert processed["Atelectasis"].tolist() == [0, 0]  # blank -> 0
    assert processed[raw_column("Cardiomegaly")].tolist() == [-1, 0]
    assert processed[raw_column("Atelectasis")].isna().all()  # blank stays blank in the raw column
    assert processed["image_path"].iloc[0] == str(root.resolve() / "train/patient00001/study1/view1_frontal.jpg")
    assert 0.3 < stats["mean"] < 0.7 and stats["train"]["patients"] == 2
    assert "uncertainty_policy" not in stats["settings"]

    with_laterals, _, _ = run(root, tmp_path, frontal_only=False)
    assert len(with_laterals) == 3


def test_the_processed_data_do_not_depend_on_the_uncertainty_policy(tmp_path):
    """uncertainty_policy has one reader, train.py: preprocess.py refuses it, and a Config
    holding another policy writes the same bytes."""
    train = [row("train", 1, Cardiomegaly="-1.0", Edema="1.0"),
             row("train", 2, Cardiomegaly="0.0", Edema="-1.0")]
    root = make_root(tmp_path, train, [row("valid", 9, Edema="1.0")], images=False)
    written = {}
    for policy in ("U-Ones", "U-Zeros"):
        cfg = Config(data_root=str(root), data_dir=str(tmp_path / policy), check_images=False,
                     uncertainty_policy=policy)
        preprocess.main(cfg)
        written[policy] = [(cfg.processed_dir / name).read_bytes()
                           for name in ("train.csv", "valid.csv", "stats.json")]
    assert written["U-Ones"][:2] == written["U-Zeros"][:2]
    assert json.loads(written["U-Ones"][2])["settings"] == \
        json.loads(written["U-Zeros"][2])["settings"]
    with pytest.raises(ConfigError, match="--uncertainty_policy is read by train.py"):
        parse_args(["--uncertainty_policy", "U-Zeros"], "preprocess.py", defaults=Config())


def test_label_hierarchy_fills_blank_parents_only(tmp_path):
    train = [row("train", 1, Cardiomegaly="1.0", Edema="1.0"),  # parents blank: filled
             row("train", 2, Cardiomegaly="1.0", Edema="1.0", **{
                 "Enlarged Cardiomediastinum": "0.0", "Lung Opacity": "-1.0"})]  # kept
    root = make_root(tmp_path, train, [row("valid", 9, Atelectasis="1.0")], images=False)
    none, _, stats = run(root, tmp_path, check_images=False)
    assert none[raw_column("Lung Opacity")].isna().tolist() == [True, False]
    assert stats["settings"]["label_hierarchy"] == "none"
    assert stats["train"]["hierarchy_filled"] == {"Lung Opacity": 0, "Enlarged Cardiomediastinum": 0}
    filled, valid, stats = run(root, tmp_path / "fill", check_images=False,
                               label_hierarchy="fill_blank")
    assert filled[raw_column("Lung Opacity")].tolist() == [1, -1]  # -1 is never overwritten
    assert filled[raw_column("Enlarged Cardiomediastinum")].tolist() == [1, 0]  # nor 0
    assert valid[raw_column("Lung Opacity")].tolist() == [1]
    assert stats["settings"]["label_hierarchy"] == "fill_blank"
    assert stats["train"]["hierarchy_filled"] == {"Lung Opacity": 1, "Enlarged Cardiomediastinum": 1}
    assert stats["valid"]["hierarchy_filled"]["Lung Opacity"] == 1


def test_missing_data_root_names_what_to_pass(tmp_path):
    with pytest.raises(PipelineError, match="--data_root must be the folder holding train.csv"):
        run(tmp_path / "nowhere", tmp_path)


def test_full_resolution_prefix_resolves(tmp_path):
    source = shared("chexpert-fullres-sample/CheXpert-v1.0")
    root = tmp_path / "CheXpert-v1.0"
    shutil.copytree(source, root)
    shutil.copyfile(root / "valid.csv", root / "train.csv")
    train, valid, stats = run(root, tmp_path, stats_sample=2)
    assert len(valid) == 2  # the lateral view is dropped
    assert train["image_path"].map(lambda p: p.startswith(str(root.resolve()) + "/valid/")).all()
    assert 0.2 < stats["mean"] < 0.8


# ---- the real CheXpert train.csv (223,414 rows) -----------------------------------------------

@pytest.fixture(scope="module")
def real_labels():
    return pd.read_csv(shared("chexpert-train-labels/train.csv.gz"), dtype=str,
                       keep_default_na=False)


def test_real_scale_counts(tmp_path, real_labels):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    real_labels.to_csv(root / "train.csv", index=False)
    shutil.copyfile(shared("chexpert-fullres-sample/CheXpert-v1.0/valid.csv"), root / "valid.csv")
    train, _, stats = run(root, tmp_path, check_images=False)
    assert len(train) == 191_027 and train["patient_id"].nunique() == 64_534
    assert stats["train"]["rows_in_csv"] == 223_414
    # the label columns are the reference standard: uncertain masked, no -1
    assert set(pd.unique(train[list(LABELS)].values.ravel()[
        ~np.isnan(train[list(LABELS)].values.ravel())])) == {0, 1}
    assert (train[list(LABELS)].isna() == (train[[raw_column(l) for l in LABELS]] == -1)
            .set_axis(list(LABELS), axis=1)).all().all()
    # training under U-Ones, from the raw columns: the rates published in ../shared/data/README.md
    policies = dict.fromkeys(LABELS, "U-Ones")
    rates = pd.Series(training_targets(train, policies, seed=0).mean(axis=0), index=list(LABELS))
    assert rates["Support Devices"] == pytest.approx(0.566, abs=5e-4)
    assert rates["Pleural Other"] == pytest.approx(0.023, abs=5e-4)
    assert stats["stats_source"].startswith("fallback")
    assert stats["train"]["hierarchy_filled"] == dict.fromkeys(HIERARCHY, 0)  # the default: none


def test_uncertainty_policies_on_real_rows(real_labels):
    raw = parse_raw_labels(real_labels)
    frame = raw.rename(columns=raw_column)
    ones = pd.DataFrame(training_targets(frame, dict.fromkeys(LABELS, "U-Ones"), 0),
                        columns=list(LABELS))
    zeros = pd.DataFrame(training_targets(frame, dict.fromkeys(LABELS, "U-Zeros"), 0),
                         columns=list(LABELS))
    uncertain = raw == -1
    assert int(uncertain["Atelectasis"].sum()) == 33_739  # published count, all rows
    assert (ones[uncertain] == 1).sum().sum() == uncertain.sum().sum()
    assert (zeros[uncertain] == 0).sum().sum() == uncertain.sum().sum()
    certain = raw.notna() & ~uncertain
    assert (ones[certain] == raw[certain]).sum().sum() == certain.sum().sum()
    assert (ones[raw.isna()] == 0).sum().sum() == raw.isna().sum().sum()


def forced_parents(raw: pd.DataFrame) -> pd.DataFrame:
    """The rule the MIMIC adapter applied before --label_hierarchy: every parent of a positive
    child positive, over an explicit 0 or -1 too."""
    raw = raw.copy()
    for parent, children in HIERARCHY.items():
        raw.loc[(raw[list(children)] == 1).any(axis=1), parent] = 1.0
    return raw


def test_label_hierarchy_on_the_real_train_csv(real_labels):
    """The counts docs/datasets.md gives for each --label_hierarchy on CheXpert's train.csv."""
    raw = parse_raw_labels(real_labels)
    frontal = (real_labels["Frontal/Lateral"] == "Frontal").to_numpy()
    none, nothing = apply_hierarchy(raw, "none")
    assert none.equals(raw) and nothing == dict.fromkeys(HIERARCHY, 0)
    filled, counts = apply_hierarchy(raw, "fill_blank")
    assert counts == {"Lung Opacity": 45_501, "Enlarged Cardiomediastinum": 24_616}
    changed = (filled != raw) & raw.notna()  # an explicit 0 or -1 changed: never
    assert not changed.any().any()
    set_on_frontal = {parent: int((filled[parent].notna() & raw[parent].isna())[frontal].sum())
                      for parent in HIERARCHY}
    assert set_on_frontal == {"Lung Opacity": 40_590, "Enlarged Cardiomediastinum": 21_418}
    # the old MIMIC rule on the same rows: 43,347 and 21,803 frontal labels raised (the issue's
    # counts), of which 2,757 and 385 over an explicit 0 or -1
    forced = forced_parents(raw)
    raised = forced.eq(1) & raw.ne(1)
    assert {parent: int(raised[parent][frontal].sum()) for parent in HIERARCHY} == \
        {"Lung Opacity": 43_347, "Enlarged Cardiomediastinum": 21_803}
    explicit = raised & raw.notna()
    assert {parent: int(explicit[parent][frontal].sum()) for parent in HIERARCHY} == \
        {"Lung Opacity": 2_757, "Enlarged Cardiomediastinum": 385}
    with pytest.raises(PipelineError, match="--label_hierarchy 'always' is not one of none"):
        apply_hierarchy(raw, "always")


# ---- fast CSV reading and writing give what pandas' own reader and writer give -----------------

HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding\n"
LINE = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0\n"
HOSTILE_CSVS = {
    "plain": HEADER + LINE, "short_row": HEADER + LINE + "a,b,c\n" + LINE,
    "long_row": HEADER + LINE + LINE.strip() + ",extra\n",
    "every_row_long": HEADER + LINE.strip() + ",x\n" + LINE.strip() + ",y\n",
    "empty": "", "bom_only": "\ufeff", "header_without_newline": HEADER.strip(),
    "header_crlf": HEADER.replace("\n", "\r\n"),
    "blank_lines": HEADER + LINE + "\n\n" + LINE + "\n\n",
    "crlf": (HEADER + LINE + "\r\n" + LINE).replace("\n", "\r\n"),
    "cr_only": (HEADER + LINE + LINE).replace("\n", "\r"), "spaces_line": HEADER + LINE + "   \n",
    "commas_line": HEADER + LINE + ",,,,,\n",
    "quoted_comma": HEADER + LINE.replace("Female", '"F,e"'),
    "quoted_newline": HEADER + LINE.replace("Female", '"F\ne"'),
    "inner_quote": HEADER + LINE.replace("Female", 'F"e'),
    "quote_then_text": HEADER + LINE.replace("Female", '"F"e'),
    "space_then_quote": HEADER + LINE.replace("Female", ' "F,e"'),
    "doubled_quote": HEADER + LINE.replace("Female", '"F""e"'),
    "unclosed_quote": HEADER + LINE.replace("Female", '"Female') + LINE,
    "nul": HEADER + LINE.replace("Female", "F\x00e"),
    "spaced_label": HEADER + LINE.replace(",1.0", ", 1.0 "),
    "duplicate_header": HEADER.replace("Sex", "Age") + LINE,
    "blank_header": HEADER.replace("Sex", "") + LINE,
    "bom": "\ufeff" + HEADER + LINE, "two_boms": "\ufeff\ufeff" + HEADER + LINE,
    "na_words": HEADER + LINE.replace("Female", "NA").replace("68", "nan").replace("1.0", "NULL"),
    "leading_zeros": HEADER + LINE.replace("68", "007"),
    "latin1": (HEADER + LINE.replace("Female", "F\xe9male")).encode("latin-1"),
    "latin1_after_many_rows":
        (HEADER + LINE * 30_000 + LINE.replace("Female", "F\xe9")).encode("latin-1"),
}


def reading_before_pyarrow(path):
    """What preprocess.read_chexpert_csv gave when it read with pandas' C parser alone."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError:
        return f"{path} is not a UTF-8 text CSV file (binary content?)"
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        return f"{path} is not a readable CSV file: {err}"


@pytest.mark.parametrize("name", HOSTILE_CSVS)
def test_csvs_read_as_the_c_parser_reads_them(tmp_path, name):
    text = HOSTILE_CSVS[name]
    path = tmp_path / "train.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    expected = reading_before_pyarrow(path)
    if isinstance(expected, str):
        with pytest.raises(PipelineError) as error:
            preprocess.read_chexpert_csv(path)
        assert str(error.value) == expected
    else:
        frame = preprocess.read_chexpert_csv(path)
        pd.testing.assert_frame_equal(frame, expected)
        assert list(frame.columns) == list(expected.columns)


def test_real_csv_reads_as_the_c_parser_reads_it(tmp_path, real_labels):
    path = tmp_path / "train.csv"
    real_labels.to_csv(path, index=False)
    pd.testing.assert_frame_equal(preprocess.read_chexpert_csv(path), real_labels)


@pytest.mark.parametrize("values", [
    ["plain", "", None, "ünï", " spaced ", "#", "nan", "\ufeff", "a\x00b", "\u2028", "'q'"],
    ["with,comma", "x"], ['with"quote', "x"], ["new\nline", "x"], ["cr\rx", "x"], ["tab\tx", "x"],
])
def test_csv_writer_writes_pandas_bytes(tmp_path, values):
    """write_csv_atomic (pyarrow for string and integer columns) writes what to_csv writes."""
    frames = [
        pd.DataFrame({"s": pd.Series(values, dtype="str"), "n": range(len(values)),
                      "raw": pd.array([1, None, -1, 0] * 3, dtype="Int8")[:len(values)],
                      "t": np.arange(len(values), dtype=np.int8), "u": np.uint64(2**64 - 1)}),
        pd.DataFrame({"s": pd.Series(values, dtype="str"), "nan": np.nan, "b": True,
                      "f": np.linspace(-1e-300, 1 / 3, len(values)),
                      "o": pd.Series(values, dtype=object)}),
        pd.DataFrame({"s": pd.Series(values, dtype="str")}),  # one column: a blank cell is ""
        pd.DataFrame({"a,b": pd.Series(values, dtype="str"), 'q"': 1}),
        pd.DataFrame({"s": pd.Series(values, dtype="str"), "n": 1}).iloc[:0],
    ]
    for frame in frames:
        write_csv_atomic(frame, tmp_path / "fast.csv")
        frame.to_csv(tmp_path / "pandas.csv", index=False)
        assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.csv", "pandas.csv"]  # no temp left


def test_floats_round_trip_through_the_csv_writer(tmp_path):
    values = np.array([0.1, 1 / 3, 2 / 3 * 1e-300, np.pi * 1e300, -0.0, 1e16 + 2, 5e-324, np.nan])
    write_csv_atomic(pd.DataFrame({"x": values, "s": "a"}), tmp_path / "floats.csv")
    read = pd.read_csv(tmp_path / "floats.csv")["x"].to_numpy()
    assert np.array_equal(read, values, equal_nan=True)


@pytest.mark.parametrize("paths", [
    ["CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg", "train/no_patient.jpg", "",
     "patient12/study3", "x/patient1/study1/patient2/study2/", "patient1/study1/x", None],
    ["x/patient\u0663/study1/a.jpg", "x/patient1/study1/\u00e9.jpg"],  # non-ASCII: pandas' regex
    [],
])
def test_patient_and_study_ids_are_those_of_pandas_extract(paths):
    series = pd.Series(paths, dtype="str", index=np.arange(len(paths))[::-1] * 3)
    expected = series.str.extract(PATIENT_STUDY)
    pd.testing.assert_frame_equal(extract_patient_study(series), expected)


def test_csv_stages_load_neither_torch_nor_opencv():
    """preprocess.py (labels only) and make_splits.py start fast: no torch, cv2 or sklearn."""
    program = ("import sys, preprocess, make_splits; "
               "print(*sorted({'torch', 'cv2', 'sklearn'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == []
