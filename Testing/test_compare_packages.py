"""Testing/Data/compare_packages.py sums and ranges the figures of several packages as the README quotes them."""

import pytest

from conftest import DATA, load_script
from SpineStenosisGraderLib.training.evaluation import RealScanScore

compare = load_script(DATA / "compare_packages.py", "compare_packages")


def _score(scan, hits, slices, discs_found, discs_inside, false, names_right, names_checked, region="lumbar"):
    return RealScanScore(scan=scan, modality="MR", trained_on=False, region_true="lumbar", region_found=region,
                         region_evidence="", canal_slices=slices, hits=hits, mean_iou=0.0, detections_off_reference=0,
                         levels=0, levels_checked=0, levels_on_canal=0, discs_inside=discs_inside,
                         discs_found=discs_found, disc_errors_mm=[], false_levels=false, names_checked=names_checked,
                         names_right=names_right, names_anchored_by="", rows=[])


def test_the_held_out_figures_count_the_necks_and_the_lumbar_t2_apart():
    figures = compare.holdout_figures([
        _score("sct_errsm_11_t2", 190, 216, 0, 0, 2, 0, 7),
        _score("sct_errsm_18_gre", 14, 15, 0, 0, 0, 2, 2),  # a neck, but not one of the whole-neck T2 scans
        _score("fastcleverseg_ivd_20", 0, 0, 4, 5, 1, 4, 4, region="cervical"),
    ])
    assert figures["canal found"] == (204, 231)
    assert figures["discs found (8 mm)"] == (4, 5)
    assert figures["false levels"] == (3, 0)
    assert figures["names right"] == (6, 13)
    assert figures["region right"] == (2, 3)
    assert figures["names right: necks"] == (0, 7)
    assert figures["names right: lumbar T2"] == (4, 4)


def test_the_vb_figures_come_from_the_scoring_scripts_rows():
    rows = [{"scan": "02", "region": "lumbar", "discs": 6, "found": 5, "false": 1, "names_matched": 5, "names_right": 0},
            {"scan": "04", "region": "unknown", "discs": 6, "found": 6, "false": 0, "names_matched": 6,
             "names_right": 6}]
    assert compare.vb_figures(rows, "VB2") == {"VB2: discs found (8 mm)": (11, 12), "VB2: false levels": (1, 0),
                                              "VB2: names right": (6, 11), "VB2: region lumbar": (1, 2)}


def test_the_table_sums_each_figure_and_gives_its_range_over_the_packages():
    text = compare.table({"seed0": {"names right": (50, 60), "false levels": (3, 0)},
                          "seed1": {"names right": (38, 64), "false levels": (5, 0)},
                          "seed2": {"names right": (45, 58), "false levels": (4, 0)}})
    lines = text.splitlines()
    assert lines[0] == "| figure | seed0 | seed1 | seed2 | sum | range |"
    assert lines[2] == "| names right | 50/60 | 38/64 | 45/58 | 133/182 | 38-50 |"
    assert lines[3] == "| false levels | 3 | 5 | 4 | 12 | 3-5 |"


def test_a_vb_folder_without_the_scans_is_refused_with_where_to_get_them(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--vb2", str(tmp_path), "default"])
    err = capsys.readouterr().err
    assert "lacks 02.mat" in err and "JonathanRamos/fastcleverseg" in err
