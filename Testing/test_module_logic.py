"""The module's Logic on real MRML (slicer-core), grading through the real background process.

The module file needs a few things only the Slicer application has: the scripted-module base
classes, the translation function, the parameter node wrapper, Qt, and sitkUtils (which moves
a volume node's voxels into SimpleITK through the application). Each is replaced here by the
smallest stand-in that does the same job, so that the Logic's own code runs unchanged: it
writes the volume, starts ``python -m SpineStenosisGraderLib.cli`` in a process of its own,
polls it, loads the result into the scene, merges a re-run, cancels, places, re-grades and
exports. Only the Python that runs the grader differs: this test's interpreter instead of
PythonSlicer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import DATA, ROOT
from SpineStenosisGraderLib.errors import InputError, SpineStenosisGraderError
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR
from SpineStenosisGraderLib.review.review import StudyReview

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"
MODULE_FILE = ROOT / "SpineStenosisGrader" / "SpineStenosisGrader.py"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _pull_volume(volume_node) -> sitk.Image:
    """What sitkUtils.PullVolumeFromSlicer gives: the voxels with their geometry in LPS."""
    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume_node))
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(ijk_to_ras)
    direction = _LPS_FROM_RAS @ np.array([[ijk_to_ras.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetDirection(tuple(direction.reshape(-1)))
    image.SetOrigin(tuple(_LPS_FROM_RAS @ np.array(volume_node.GetOrigin())))
    image.SetSpacing(volume_node.GetSpacing())
    return image


class _ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Logic")]


def _application_stand_ins() -> dict[str, types.ModuleType]:
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = unittest.TestCase
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    sitk_utils = types.ModuleType("sitkUtils")
    sitk_utils.PullVolumeFromSlicer = _pull_volume
    return {"slicer.ScriptedLoadableModule": scripted, "slicer.i18n": i18n,
            "slicer.parameterNodeWrapper": wrapper, "sitkUtils": sitk_utils,
            "qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk")}


@pytest.fixture(scope="module")
def module():
    """The module file, imported with the application's parts stood in for (for as long as its tests run:
    the Logic imports sitkUtils when it needs it)."""
    stand_ins = _application_stand_ins()
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location("SpineStenosisGraderModuleUnderTest", MODULE_FILE)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        # the grader runs in this interpreter instead of PythonSlicer
        loaded.SpineStenosisGraderLogic.pythonExecutable = staticmethod(lambda: sys.executable)
        yield loaded
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _new_scene():
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())
    scene.AddNode(slicer.vtkMRMLInteractionNode())
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLScene(scene)
    scene._test_markups_logic = markups_logic  # keep the logic alive with the scene
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # Slicer always has one
    return scene


def _load_sample(scene, name="example_ct"):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(SAMPLE))
    assert storage.ReadData(volume)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    return volume


@pytest.fixture
def logic(module, tmp_path):
    return module.SpineStenosisGraderLogic(packagesRoot=str(tmp_path / "models"), tempRoot=str(tmp_path / "temp"))


@pytest.fixture(scope="module")
def graded(module, tmp_path_factory):
    """The sample graded once through the Logic's background path (shared: grading takes seconds)."""
    folder = tmp_path_factory.mktemp("graded")
    logic = module.SpineStenosisGraderLogic(packagesRoot=str(folder / "models"), tempRoot=str(folder / "temp"))
    scene = _new_scene()
    volume = _load_sample(scene)
    stages = []
    review = logic.gradeAndWait(volume, timeoutSeconds=600, progress=lambda report: stages.append(report.stage))
    return types.SimpleNamespace(logic=logic, scene=scene, volume=volume, review=review, stages=stages,
                                 temp=folder / "temp")


def test_grading_runs_in_the_background_and_puts_one_box_per_level_in_the_scene(graded):
    assert graded.stages == ["read", "detect", "levels", "grade", "write", "done"]
    assert not graded.logic.isGrading() and not graded.logic.lastRunWasRerun
    review = graded.review
    result = review.result()
    rois = review.level_rois()
    assert len(rois) == len(result.levels) >= 5
    assert [roi.GetName() for roi in rois] == [level.name for level in result.levels]
    for roi in rois:
        assert roi.GetROIType() == slicer.vtkMRMLMarkupsROINode.ROITypeBox
        assert min(roi.GetSize()) > 0
    assert review.table_node.GetNumberOfRows() == len(rois)
    assert review.volume_node is graded.volume
    # the result names the study's file, not the temporary copy the grader read
    assert result.study.source == str(SAMPLE)
    assert StudyReview.in_scene(graded.scene, graded.volume)[-1].table_node is review.table_node
    assert graded.logic.reviewForVolume(graded.volume).table_node is review.table_node
    assert list(graded.temp.iterdir()) == []  # the run's files are gone


def test_a_rerun_keeps_the_clinicians_grade_and_says_what_changed(graded, module, tmp_path):
    review = graded.review
    roi = review.level_rois()[0]
    # the default package leaves a CT ungraded (its grade scope); the run still has the package's scale, so the
    # clinician grades it by hand
    assert review.result().levels[0].grade is None and review.scale().key == "schizas"
    clinician = "C"
    review.set_clinician_grade(roi, clinician)

    logic = module.SpineStenosisGraderLogic(packagesRoot=str(tmp_path / "models"), tempRoot=str(tmp_path / "temp"))
    rerun = logic.gradeAndWait(graded.volume, timeoutSeconds=600)
    assert logic.lastRunWasRerun
    assert len(StudyReview.in_scene(graded.scene, graded.volume)) == 1
    assert rerun.table_node is review.table_node
    assert isinstance(logic.lastChanges, list)  # the same study and model: typically nothing changed
    kept = [level for level in rerun.result().levels if level.correction and level.correction.grade == clinician]
    assert len(kept) == 1
    review.set_clinician_grade(roi, None)


def test_cancel_kills_the_run_and_leaves_the_scene_unchanged(logic, tmp_path):
    scene = _new_scene()
    volume = _load_sample(scene)
    nodes_before = scene.GetNumberOfNodes()
    run = logic.startGrading(volume)
    assert logic.isGrading()
    with pytest.raises(RuntimeError, match="already"):
        logic.startGrading(volume)
    deadline = time.monotonic() + 120
    while run.progress is None:
        logic.pollGrading()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    logic.cancelGrading()
    assert not logic.isGrading() and logic.pollGrading() == []
    assert not run.work_dir.exists()
    assert scene.GetNumberOfNodes() == nodes_before
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0


def test_a_failed_run_raises_the_graders_message_and_leaves_the_scene_unchanged(logic, tmp_path):
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(DEFAULT_PACKAGE_DIR, damaged)
    weights = damaged / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    scene = _new_scene()
    volume = _load_sample(scene)
    nodes_before = scene.GetNumberOfNodes()
    logic.startGrading(volume, packagePath=str(damaged))
    with pytest.raises(RuntimeError, match="SHA256"):
        while logic.isGrading():
            logic.pollGrading()
            time.sleep(0.05)
    assert not logic.isGrading()
    assert scene.GetNumberOfNodes() == nodes_before
    assert list((tmp_path / "temp").iterdir()) == []


def test_volumes_that_cannot_be_graded_are_refused_before_any_process_starts(logic):
    scene = _new_scene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="holds an image"):
        logic.startGrading(empty)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    labels.SetAndObserveImageData(vtk.vtkImageData())
    with pytest.raises(ValueError, match="segmentation is a label map"):
        logic.startGrading(labels)
    volume = _load_sample(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="Harden"):
        logic.startGrading(volume)
    assert not logic.isGrading()


def test_a_placed_box_becomes_a_level_and_an_abandoned_one_is_removed(graded, logic):
    scene = _new_scene()
    review = StudyReview.create(scene, graded.review.result(), _load_sample(scene))
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    interaction.SetPlaceModePersistence(1)  # the user's own setting: keep placing

    abandoned = logic.startPlacingLevel(review)
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence() == 0  # one box, then the place mode ends
    assert selection.GetActivePlaceNodeID() == abandoned.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # the user pressed Esc
    assert logic.finishPlacingLevel(review, abandoned) is None
    assert abandoned.GetScene() is None
    assert interaction.GetPlaceModePersistence() == 1  # the user's setting is back

    # the detector missed a disc: here, one level is taken away and placed again by hand
    missed = review.level_rois()[2]
    name, center = missed.GetName(), np.array(missed.GetCenter())
    review.remove_level(missed)
    levels_before = len(review.level_rois())
    placed = logic.startPlacingLevel(review)
    # two opposite corners clicked on the axial slice through the disc
    placed.AddControlPoint(vtk.vtkVector3d(*(center - [8.0, 6.0, 0.0])))
    placed.AddControlPoint(vtk.vtkVector3d(*(center + [8.0, 6.0, 0.0])))
    assert logic.finishPlacingLevel(review, placed) == {}
    assert len(review.level_rois()) == levels_before + 1
    assert placed.GetName() == name  # named from the level below it
    assert review.is_edited(placed) and review.grade_is_stale(placed)
    assert interaction.GetPlaceModePersistence() == 1

    with pytest.raises(ValueError, match="Grade the volume first"):
        logic.startPlacingLevel(None)


def _place_box(logic, review, center):
    roi = logic.startPlacingLevel(review)
    roi.AddControlPoint(vtk.vtkVector3d(*(np.asarray(center) - [8.0, 6.0, 0.0])))
    roi.AddControlPoint(vtk.vtkVector3d(*(np.asarray(center) + [8.0, 6.0, 0.0])))
    return roi


def test_a_box_placed_between_two_found_levels_takes_its_name_and_the_names_above_move(graded, logic):
    scene = _new_scene()
    review = StudyReview.create(scene, graded.review.result(), _load_sample(scene))
    names = [roi.GetName() for roi in review.level_rois()]
    # the detector missed the third disc and counted on from the sacrum: the levels above it are named one low
    missed = review.level_rois()[2]
    center = np.array(missed.GetCenter())
    review.remove_level(missed)
    lowest = review.level_rois()[0]
    review.reanchor(lowest, lowest.GetName())
    assert [roi.GetName() for roi in review.level_rois()] == names[:-1]  # the third name is taken
    placed = _place_box(logic, review, center)
    renamed = logic.finishPlacingLevel(review, placed)
    assert placed.GetName() == names[2]
    assert [roi.GetName() for roi in review.level_rois()] == names
    assert len(renamed) == len(names) - 3


def test_a_box_that_cannot_become_a_level_is_removed_with_the_reason(graded, logic):
    scene = _new_scene()
    review = StudyReview.create(scene, graded.review.result(), _load_sample(scene))
    rois_before = scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    outside = _place_box(logic, review, np.array(review.level_rois()[-1].GetCenter()) + [0.0, 0.0, 500.0])
    with pytest.raises(SpineStenosisGraderError, match="outside the graded volume"):
        logic.finishPlacingLevel(review, outside)
    assert outside.GetScene() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == rois_before


def test_regrading_a_moved_box_uses_the_package_that_graded_the_run(graded):
    logic, review = graded.logic, graded.review
    assert logic.packageForRun(review).path == DEFAULT_PACKAGE_DIR
    roi = review.level_rois()[1]
    center = list(roi.GetCenter())
    roi.SetCenter(center[0] + 2.0, center[1], center[2])
    # the sample is a CT, which the default package does not grade: one moved box does not bring a grade back
    with pytest.raises(InputError, match="shows its grade on MR studies only, not CT"):
        logic.regradeLevel(review, roi)
    assert review.result().levels[1].grade is None
    assert review.is_edited(roi)
    roi.SetCenter(*center)


def test_a_run_by_a_package_that_is_not_installed_cannot_be_regraded(graded, logic):
    result = graded.review.result()
    result.model.version = "9.9.9"  # a version this installation does not have
    scene = _new_scene()
    review = StudyReview.create(scene, result, _load_sample(scene))
    with pytest.raises(RuntimeError, match="9.9.9.*not installed"):
        logic.packageForRun(review)


def test_exports_write_results_and_an_annotation_set_without_patient_identifiers(graded, logic, tmp_path):
    written = logic.exportResults(graded.review, str(tmp_path / "results"))
    names = {Path(p).name for p in written}
    assert {"result.json", "levels.csv", "report.html"} <= names
    assert any(name.endswith(".mrk.json") for name in names)

    # a volume loaded from DICOM sits under its patient in the Data module, which knows the name and ID
    scene = _new_scene()
    volume = _load_sample(scene)
    review = StudyReview.create(scene, graded.review.result(), volume)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Doe^Jane")
    sh.SetItemAttribute(patient, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMPatientNameAttributeName(),
                        "Doe^Jane")
    sh.SetItemAttribute(patient, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMPatientIDAttributeName(), "P-0042")
    study = sh.CreateStudyItem(patient, "Lumbar CT")
    item = sh.GetItemByDataNode(volume)
    if item:
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, volume)

    anonymous = logic.exportAnnotationSet(review, str(tmp_path / "anonymous"))
    provenance = json.loads((tmp_path / "anonymous" / "provenance.json").read_text())
    assert not provenance["patient_info_included"] and "patient" not in provenance
    exported = sitk.ReadImage(str(next(p for p in anonymous if Path(p).name.startswith("volume."))))
    assert "Doe" not in json.dumps({key: exported.GetMetaData(key) for key in exported.GetMetaDataKeys()})

    logic.exportAnnotationSet(review, str(tmp_path / "identified"), includePatientInfo=True)
    provenance = json.loads((tmp_path / "identified" / "provenance.json").read_text())
    assert provenance["patient"] == {"name": "Doe^Jane", "id": "P-0042"}


def test_the_modules_requirements_bring_onnx_runtime_and_never_torch_or_slicers_own_packages(logic):
    names = [logic.requirementName(r) for r in logic.requirements()]
    assert "onnxruntime" in names
    assert not {"torch", "torchvision", "numpy", "simpleitk", "scipy"} & set(names)
    assert "timm" in [logic.requirementName(r) for r in logic.requirements("torch")]


def test_requirements_never_pip_install_torch_or_what_slicer_bundles(logic, tmp_path, module):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nonnxruntime>=1.17\ntorch>=2.2\ntorchvision>=0.17\nnumpy>=1.24\n"
                            "SimpleITK>=2.3\nscipy>=1.10\nsafetensors>=0.4  # weights\n--extra-index-url https://x\n")
    logic.resourcePath = lambda relative: str(tmp_path / relative)
    assert logic.requirements() == ["onnxruntime>=1.17", "safetensors>=0.4"]
    assert logic.requirements("torch") == ["onnxruntime>=1.17", "safetensors>=0.4", "timm>=1.0"]
    assert module.SpineStenosisGraderLogic.requirementName("Safe_Tensors [x]>=1") == "safe-tensors"


def test_installed_packages_and_import_go_through_the_user_folder(logic, tmp_path):
    entries = logic.installedPackages()
    assert [entry.is_default for entry in entries] == [True]
    imported = logic.importPackage(str(DEFAULT_PACKAGE_DIR))
    assert Path(imported.path).parent == tmp_path / "models" and imported.usable
    assert len(logic.installedPackages()) == 2
    with pytest.raises(SpineStenosisGraderError):
        logic.importPackage(str(tmp_path / "nothing-here"))
    facts = logic.packageFacts(imported)
    assert "not for clinical use" in facts["intended_use"].lower()
    assert logic.packageTasks(imported)[0][0] == "lumbar_central_canal"


def _slicer_without_packaging(monkeypatch, module, confirm=True):
    """Slicer before 5.11: no slicer.packaging; slicer.util asks and pip-installs (recorded here)."""
    installed, asked = [], []

    def confirmOkCancelDisplay(message, *args, **kwargs):
        asked.append(message)
        return confirm

    util = types.SimpleNamespace(confirmOkCancelDisplay=confirmOkCancelDisplay, pip_install=installed.append)
    monkeypatch.setattr(module, "slicer", types.SimpleNamespace(util=util))
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # "import slicer.packaging" raises ImportError
    return installed, asked


def test_dependencies_install_with_pip_install_on_slicer_before_pip_ensure(logic, module, monkeypatch):
    installed, asked = _slicer_without_packaging(monkeypatch, module)
    logic.requirements = lambda backend=None: ["onnxruntime>=1.0", "no-such-package-for-this-test>=1.0"]
    logic.ensureDependencies()
    # only what is missing is installed, after the user said yes
    assert installed == [["no-such-package-for-this-test>=1.0"]]
    assert len(asked) == 1 and "no-such-package-for-this-test" in asked[0]


def test_declining_the_install_on_older_slicer_says_what_was_not_installed(logic, module, monkeypatch):
    installed, _ = _slicer_without_packaging(monkeypatch, module, confirm=False)
    logic.requirements = lambda backend=None: ["no-such-package-for-this-test>=1.0"]
    with pytest.raises(RuntimeError, match="no-such-package-for-this-test.*cancelled"):
        logic.ensureDependencies()
    assert installed == []


def test_dependencies_go_through_pip_ensure_where_slicer_has_it(logic, module, monkeypatch):
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, requester=None: calls.append((requirements, requester))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    logic.requirements = lambda backend=None: ["onnxruntime>=1.0"]
    logic.ensureDependencies()
    assert calls == [(["onnxruntime>=1.0"], "SpineStenosisGrader")]


class _InputDialog:
    """qt.QInputDialog as PythonQt gives it: getItem cannot say "cancelled" and returns the current item."""

    answer = None  # what the user does: None cancels, a string is typed and accepted
    shown = []

    def __init__(self, parent=None):
        self.values = {}

    @staticmethod
    def getItem(parent, title, label, items, current=0, editable=True):
        return items[current]

    def __getattr__(self, name):  # setWindowTitle, setLabelText, setComboBoxItems, ...
        if not name.startswith("set"):
            raise AttributeError(name)
        return lambda value: self.values.__setitem__(name[3:], value)

    def exec_(self):
        _InputDialog.shown.append(self.values)
        return 0 if self.answer is None else 1

    def textValue(self):
        return self.answer


def test_cancel_in_the_level_name_dialogs_cancels(module, logic, monkeypatch):
    qt = types.SimpleNamespace(QInputDialog=_InputDialog, QDialog=types.SimpleNamespace(Accepted=1, Rejected=0))
    monkeypatch.setattr(module, "qt", qt)
    monkeypatch.setattr(module, "slicer", types.SimpleNamespace(util=types.SimpleNamespace(mainWindow=lambda: None)))
    widget = types.SimpleNamespace(logic=logic)
    ask = module.SpineStenosisGraderWidget.askLevelName

    monkeypatch.setattr(_InputDialog, "answer", None)
    assert ask(widget, "Rename level", "New name:", "L4-L5") == ""
    shown = _InputDialog.shown[-1]
    assert shown["TextValue"] == "L4-L5" and "L5-S1" in shown["ComboBoxItems"] and shown["ComboBoxEditable"]
    monkeypatch.setattr(_InputDialog, "answer", " l3/l4 ")
    assert ask(widget, "Rename level", "New name:", "L4-L5") == "l3/l4"


def test_the_self_test_skips_grading_and_says_why_when_the_requirements_are_missing(module, monkeypatch):
    monkeypatch.setattr(module.SpineStenosisGraderLogic, "requirements",
                        lambda self, backend=None: ["no-such-package-for-this-test>=1.0"])
    test = module.SpineStenosisGraderTest()
    shown, ran = [], []
    test.delayDisplay = shown.append
    test.setUp = lambda: ran.append("setUp")
    test.test_CancelLeavesTheSceneUnchanged = lambda: ran.append("cancel")
    test.test_GradeCorrectSaveAndReload = lambda: ran.append("grade")
    test.runTest()
    assert ran == []
    assert len(shown) == 1 and "no-such-package-for-this-test" in shown[0] and "skipped" in shown[0]

    monkeypatch.setattr(module.SpineStenosisGraderLogic, "requirements", lambda self, backend=None: ["numpy>=1.0"])
    test.runTest()
    assert ran == ["setUp", "cancel", "setUp", "grade"]


def _edited_column(review):
    table = review.table_node
    column = next(c for c in range(table.GetNumberOfColumns()) if table.GetColumnName(c) == "edited")
    return [table.GetCellText(row, column) for row in range(table.GetNumberOfRows())]


def test_a_moved_box_brings_every_runs_table_up_to_date_without_a_save_event(graded, logic, module, monkeypatch):
    """Slicer never fires vtkMRMLScene::StartSaveEvent: the tables follow the boxes as they move."""
    scene = _new_scene()
    shown = StudyReview.create(scene, graded.review.result(), _load_sample(scene, "shown"))
    other = StudyReview.create(scene, graded.review.result(), _load_sample(scene, "other"))
    monkeypatch.setattr(module, "slicer", types.SimpleNamespace(mrmlScene=scene))
    observed = []
    widget = types.SimpleNamespace(
        logic=logic, _review=shown, _observedRois=[], updateResultsTable=lambda: None,
        onLevelRoiModified=None, addObserver=lambda node, event, method: observed.append(node.GetID()),
        removeObserver=lambda node, event, method: observed.remove(node.GetID()))

    # the panel shows one run, but the boxes of every run are followed
    module.SpineStenosisGraderWidget.observeLevelRois(widget, shown.level_rois())
    assert sorted(observed) == sorted(roi.GetID() for roi in shown.level_rois() + other.level_rois())

    row = _edited_column(other).index("0")  # a level nobody has touched yet
    roi = other.level_rois()[row]
    center = list(roi.GetCenter())
    roi.SetCenter(center[0] + 3.0, center[1], center[2])
    assert _edited_column(other)[row] == "0"  # moving a box does not touch the table by itself
    module.SpineStenosisGraderWidget.onTableRefreshTimer(widget)  # what the box's ModifiedEvent starts
    assert _edited_column(other)[row] == "1"


def test_the_panel_says_before_apply_that_a_ct_will_be_located_not_graded(logic):
    """The default package shows no grade on CT (its grade scope); the orange warning says so beforehand."""
    scene = _new_scene()
    volume = _load_sample(scene)
    entry = next(e for e in logic.installedPackages() if e.usable and e.path == DEFAULT_PACKAGE_DIR)
    (warning,) = logic.compatibilityWarnings(entry, volume, "CT", "lumbar")
    assert "shows its grade on MR studies only, not CT" in warning and "located but not graded" in warning
    assert logic.compatibilityWarnings(entry, volume, "MR", "lumbar") == []
    # unknown modality (no DICOM header, never graded): nothing to say yet
    assert logic.compatibilityWarnings(entry, volume, None, None) == []
