import enum
import logging
import os
from typing import Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode

# Only what Slicer bundles is imported here. The core library (SpineStenosisGraderLib) is imported
# inside the methods that use it: grading itself runs in a separate process (the library's command
# line, started with PythonSlicer), and its inference packages are installed on demand, with the
# user's consent, when the user presses Apply.

DOCUMENTATION_URL = "https://github.com/spine-stenosis-grader/SlicerSpineStenosisGrader#using-it-in-3d-slicer"

#: the sample study offered in the Sample Data module (a copy of Testing/Data/totalsegmentator_ct/example_ct.nii.gz)
SAMPLE_NAME = "SpineStenosisGraderLumbarCT"
SAMPLE_FILE = os.path.join("Resources", "SampleData", "example_ct.nii.gz")
SAMPLE_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"


#
# SpineStenosisGrader
#


class SpineStenosisGrader(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spine Stenosis Grader")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpineStenosisGrader developers (SpineStenosisGrader project)"]
        self.parent.helpText = _("""
Grades spinal canal stenosis on axial CT and T2 MRI of the lumbar and cervical spine.
It finds the spinal canal on each slice, groups the slices into intervertebral disc levels
(L1-L2 to L5-S1, C2-C3 to C7-T1), draws one box (Markups ROI) per level coloured by grade,
and lists the grades in a table where they can be corrected.
<p><b>Not for clinical use.</b> The default model is trained on phantoms and public samples. It shows its
grade on T2 MRI only: on CT it finds and names the levels and leaves the grade to you.</p>
<p>See the {linkStart}documentation{linkEnd}.</p>
""").format(linkStart='<a href="{url}">'.format(url=DOCUMENTATION_URL), linkEnd="</a>")
        self.parent.acknowledgementText = _("""
Developed by the SpineStenosisGrader developers. The two-stage method (a detector finds the canal,
convolutional classifiers grade the crop) follows:
<ul>
<li>Zhang YL, Huang JW, Li KY, et al. Automated Classification of Cervical Spinal Stenosis using
Deep Learning on CT Scans. 2025.</li>
<li>Development of a Deep-Learning Model for Diagnosing Lumbar Spinal Stenosis Based on CT Images.
{pubmedLumbarCT}.</li>
<li>Lumbar Spinal Stenosis Grading in Multiple Level Magnetic Resonance Imaging Using Deep
Convolutional Neural Networks. {pubmedLumbarMR}.</li>
</ul>
The sample study is the TotalSegmentator example CT (Apache-2.0).
This software is not for clinical use.
""").format(
            pubmedLumbarCT='<a href="https://pubmed.ncbi.nlm.nih.gov/38112156/">PMID 38112156</a>',
            pubmedLumbarMR='<a href="https://pubmed.ncbi.nlm.nih.gov/39487037/">PMID 39487037</a>',
        )

        # Sample data is registered once the application has started, not while modules load.
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register the sample study in the Sample Data module
#


def registerSampleData():
    """Offer the bundled lumbar CT in the Sample Data module (read from the module folder, checked by SHA256)."""
    import pathlib

    import SampleData

    moduleDir = os.path.dirname(__file__)
    category = "SpineStenosisGrader"
    # registerCustomSampleDataCategory exists in recent Slicer only; older ones show the category key.
    registerCategory = getattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory", None)
    if registerCategory is not None:
        registerCategory(category, title=_("Spine Stenosis Grader"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=category,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(moduleDir, "Resources", "Icons", SAMPLE_NAME + ".png"),
        # The file ships with the module, so no download is needed; a file URL goes through the same
        # cache and checksum verification as a download.
        uris=pathlib.Path(moduleDir, SAMPLE_FILE).resolve().as_uri(),
        fileNames=SAMPLE_NAME + ".nii.gz",
        checksums="SHA256:" + SAMPLE_SHA256,
        nodeNames=SAMPLE_NAME,
    )


#
# SpineStenosisGraderParameterNode
#


class AutomaticChoice(enum.Enum):
    """A choice the user may leave to the grader (the AUTO member, value "auto")."""

    def label(self) -> str:
        # Called by the parameter node wrapper to fill the combo box.
        return choiceLabels()[self]

    def pipelineValue(self) -> Optional[str]:
        """The value for the grader: None when left to it."""
        return None if self.value == "auto" else self.value


class Modality(AutomaticChoice):
    """Imaging modality of the input; AUTO lets the grader decide (DICOM header, else intensities)."""

    AUTO = "auto"
    CT = "CT"
    MR = "MR"


class BodyRegion(AutomaticChoice):
    """Spine region of the input; AUTO lets the grader read it from the anatomy (sacrum, vertebrae, outline)."""

    AUTO = "auto"
    LUMBAR = "lumbar"
    THORACIC = "thoracic"
    CERVICAL = "cervical"


class InferenceBackend(AutomaticChoice):
    """What runs the model: AUTO lets the package decide (ONNX Runtime when it can); PyTorch is optional."""

    AUTO = "auto"
    ONNX = "onnx"
    TORCH = "torch"


def choiceLabels() -> dict:
    """What the combo boxes show for each choice (translated when asked, not when the module loads)."""
    automatic = _("Automatic")
    return {
        Modality.AUTO: automatic, Modality.CT: _("CT"), Modality.MR: _("MR (T2)"),
        BodyRegion.AUTO: automatic, BodyRegion.LUMBAR: _("Lumbar"), BodyRegion.THORACIC: _("Thoracic"),
        BodyRegion.CERVICAL: _("Cervical"),
        InferenceBackend.AUTO: automatic, InferenceBackend.ONNX: _("ONNX Runtime"),
        InferenceBackend.TORCH: _("PyTorch"),
    }


@parameterNodeWrapper
class SpineStenosisGraderParameterNode:
    """
    The parameters needed by module.

    inputVolume - The axial CT or T2 MRI volume to grade.
    modality - CT or MR, or automatic.
    region - Lumbar, thoracic or cervical spine, or automatic.
    backend - What runs the model (ONNX Runtime or PyTorch), or automatic.
    modelPackagePath - Folder of the chosen model package; empty for the embedded default.
    includePatientInfo - Whether an exported annotation set carries the patient's name and ID.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modality: Modality = Modality.AUTO
    region: BodyRegion = BodyRegion.AUTO
    backend: InferenceBackend = InferenceBackend.AUTO
    modelPackagePath: str = ""
    includePatientInfo: bool = False


#
# SpineStenosisGraderWidget
#


class SpineStenosisGraderWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    #: how often the background run is asked for progress
    POLL_INTERVAL_MS = 200
    #: the results table is rebuilt this long after the last change of a level box (not on every drag step)
    TABLE_REFRESH_DELAY_MS = 300
    #: results table columns
    LEVEL_COLUMN, AI_GRADE_COLUMN, CLINICIAN_COLUMN, EDITED_COLUMN = range(4)

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._packages = []
        self._review = None
        self._shownVolumeID = None
        self._rowRoiIDs = []
        self._observedRois = []
        self._placingRoi = None
        self._updatingTable = False
        self._pollTimer = None
        self._tableRefreshTimer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineStenosisGrader.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the top-level qMRMLWidget's mrmlSceneChanged(vtkMRMLScene*) signal
        # to the setMRMLScene(vtkMRMLScene*) slot of each MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SpineStenosisGraderLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self._tableRefreshTimer = qt.QTimer()
        self._tableRefreshTimer.setSingleShot(True)
        self._tableRefreshTimer.setInterval(self.TABLE_REFRESH_DELAY_MS)
        self._tableRefreshTimer.connect("timeout()", self.onTableRefreshTimer)

        self.ui.progressBar.hide()
        table = self.ui.resultsTableWidget
        for column in (self.LEVEL_COLUMN, self.AI_GRADE_COLUMN, self.EDITED_COLUMN):
            table.horizontalHeader().setSectionResizeMode(column, qt.QHeaderView.ResizeToContents)

        # Keep the parameter node valid across scene close; bring a loaded scene's results into the panel.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        # The table nodes are saved with the scene, and Slicer fires no event before it saves
        # (vtkMRMLScene::StartSaveEvent is declared but never fired): every correction brings
        # the tables up to date instead. Grades, names and added or removed levels do so as they
        # are made; a moved box does so through observeLevelRois().

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelPackageComboBox.connect("currentIndexChanged(int)", self.onModelPackageChanged)
        self.ui.importPackageButton.connect("clicked(bool)", self.onImportPackageButton)
        table.connect("itemSelectionChanged()", self.onResultsSelectionChanged)
        table.connect("cellClicked(int,int)", self.onResultsCellClicked)
        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoiButton)
        self.ui.deleteLevelButton.connect("clicked(bool)", self.onDeleteLevelButton)
        self.ui.renameLevelButton.connect("clicked(bool)", self.onRenameLevelButton)
        self.ui.reanchorButton.connect("clicked(bool)", self.onReanchorButton)
        self.ui.regradeButton.connect("clicked(bool)", self.onRegradeButton)
        self.ui.exportResultsButton.connect("clicked(bool)", self.onExportResultsButton)
        self.ui.exportAnnotationSetButton.connect("clicked(bool)", self.onExportAnnotationSetButton)

        self.refreshModelPackages()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.logic and self.logic.isGrading():
            # a grading process must not outlive the application
            self.logic.cancelGrading()
        if self._pollTimer:
            self._pollTimer.stop()
        if self._tableRefreshTimer:
            self._tableRefreshTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        if self.logic.isGrading():
            # the volume being graded is going away: its result would have nowhere to go
            self.logic.cancelGrading()
            self.setRunning(False)
            self.ui.statusLabel.text = _("Grading was cancelled because the scene was closed.")
        self.cancelPlacing()
        self.setParameterNode(None)
        self.showReview(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A scene was loaded (for example a saved .mrb): show its results for the selected volume."""
        self._shownVolumeID = None
        self.updateGUIFromParameterNode()

    def onNodeRemoved(self, caller, event) -> None:
        # A level box or the whole run may have been deleted elsewhere (Data module): refresh later, once.
        if self._review is not None and not self._updatingTable:
            self._tableRefreshTimer.start()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select a volume if nothing is selected yet, to save the user a click.
        if not self._parameterNode.inputVolume:
            # the first image volume: a label map is a scalar volume too, but not one to grade
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            firstVolumeNode = next((v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SpineStenosisGraderParameterNode]) -> None:
        """Set and observe the parameter node, and bind it to the GUI."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry a "SlicerParameterName" dynamic property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """What depends on the parameters: the chosen package, its warnings, the results shown, Apply."""
        if not self._parameterNode:
            return
        self.selectModelPackage(self._parameterNode.modelPackagePath)
        volume = self._parameterNode.inputVolume
        volumeID = volume.GetID() if volume else None
        if volumeID != self._shownVolumeID and not self.logic.isGrading():
            self._shownVolumeID = volumeID
            self.showReview(self.logic.reviewForVolume(volume) if volume else None)
        self.updateCompatibilityWarning()
        self.updateApplyButtonState()

    def updateApplyButtonState(self) -> None:
        if self.logic.isGrading():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop grading; the scene is left as it was")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        package = self.currentPackageEntry()
        if not (self._parameterNode and self._parameterNode.inputVolume):
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False
        elif package is None or not package.usable:
            self.ui.applyButton.toolTip = _("Choose a model package that can be used")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Find the disc levels and grade them")
            self.ui.applyButton.enabled = True

    # Model packages

    def currentPackageEntry(self):
        index = self.ui.modelPackageComboBox.currentIndex
        return self._packages[index] if 0 <= index < len(self._packages) else None

    def refreshModelPackages(self, selectPath: Optional[str] = None) -> None:
        """List the default and the imported packages, keeping (or setting) the selection."""
        if selectPath is None and self._parameterNode:
            selectPath = self._parameterNode.modelPackagePath
        self._packages = self.logic.installedPackages()
        combo = self.ui.modelPackageComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in self._packages:
            if entry.is_default:
                text = _("{name} (embedded default)").format(name=entry.label)
            elif not entry.usable:
                text = _("{name} (cannot be used)").format(name=entry.label)
            else:
                text = entry.label
            combo.addItem(text)
            combo.setItemData(combo.count - 1, entry.error or str(entry.path), qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        self.selectModelPackage(selectPath or "")
        self.onModelPackageChanged(combo.currentIndex)

    def selectModelPackage(self, path: str) -> None:
        """Select the package in folder ``path`` ("" for the default) without reacting to it."""
        index = next((i for i, entry in enumerate(self._packages) if self.packagePathValue(entry) == path), 0)
        combo = self.ui.modelPackageComboBox
        if combo.currentIndex != index:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)
            self.updateModelInfo()

    @staticmethod
    def packagePathValue(entry) -> str:
        return "" if entry.is_default else str(entry.path)

    def onModelPackageChanged(self, index: int) -> None:
        entry = self.currentPackageEntry()
        if self._parameterNode and entry is not None:
            self._parameterNode.modelPackagePath = self.packagePathValue(entry)
        self.updateModelInfo()
        self.updateCompatibilityWarning()
        self.updateApplyButtonState()

    def updateModelInfo(self) -> None:
        """The task combo and the manifest summary of the chosen package."""
        import html

        entry = self.currentPackageEntry()
        taskCombo = self.ui.taskComboBox
        taskCombo.clear()
        if entry is None:
            self.ui.modelInfoLabel.text = ""
            taskCombo.enabled = False
            return
        if not entry.usable:
            self.ui.modelInfoLabel.text = "<b>{title}</b><br>{error}".format(
                title=html.escape(_("This model package cannot be used:")), error=html.escape(entry.error))
            taskCombo.enabled = False
            return
        for key, title in self.logic.packageTasks(entry):
            taskCombo.addItem(title, key)
        # The grader runs every task of a package; the list says what it grades.
        taskCombo.enabled = taskCombo.count > 1
        facts = self.logic.packageFacts(entry)
        rows = [
            (_("Task"), facts["task"]),
            (_("Grading scale"), facts["scale"]),
            (_("Modalities"), facts["modalities"]),
            (_("Regions graded"), facts["regions"]),
            (_("Grade shown on"), facts["grade_shown_on"]),
            (_("Training data"), facts["training_data"]),
            (_("Version"), facts["version"]),
            (_("Licence"), facts["licence"]),
        ]
        text = "<b>{name}</b><br>".format(name=html.escape(facts["name"]))
        text += "<br>".join("{label}: {value}".format(label=html.escape(label), value=html.escape(value))
                            for label, value in rows)
        text += "<br><b>{label}: {value}</b>".format(label=html.escape(_("Intended use")),
                                                     value=html.escape(facts["intended_use"]))
        self.ui.modelInfoLabel.text = text

    def updateCompatibilityWarning(self) -> None:
        entry = self.currentPackageEntry()
        warnings = []
        if entry is not None and entry.usable and self._parameterNode and self._parameterNode.inputVolume:
            warnings = self.logic.compatibilityWarnings(
                entry, self._parameterNode.inputVolume,
                self._parameterNode.modality.pipelineValue(), self._parameterNode.region.pipelineValue())
        self.ui.compatibilityWarningLabel.text = "\n".join(warnings)
        self.ui.compatibilityWarningLabel.visible = bool(warnings)

    def onImportPackageButton(self) -> None:
        settings = qt.QSettings()
        startFolder = settings.value("SpineStenosisGrader/ImportFolder", qt.QDir.homePath())
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Import a model package"), startFolder,
            _("Model package (manifest.json *.zip)"))
        if not path:
            return
        settings.setValue("SpineStenosisGrader/ImportFolder", os.path.dirname(path))
        # A folder is chosen through its manifest; a .zip as it is.
        source = os.path.dirname(path) if os.path.basename(path).lower() == "manifest.json" else path
        with slicer.util.tryWithErrorDisplay(_("The model package was not imported."), waitCursor=True):
            entry = self.logic.importPackage(source)
            self.refreshModelPackages(selectPath=self.packagePathValue(entry))
            self.ui.statusLabel.text = _("Imported model package {name} into {folder}.").format(
                name=entry.label, folder=entry.path)

    # Grading in the background

    def setRunning(self, running: bool) -> None:
        """Apply becomes Cancel; the inputs cannot change while a study is graded."""
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                       self.ui.resultsCollapsibleButton, self.ui.exportCollapsibleButton):
            widget.enabled = not running
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = _("Starting")
            self._pollTimer.start()
        else:
            self._pollTimer.stop()
        self.updateApplyButtonState()

    def onApplyButton(self) -> None:
        """Grade the selected volume in the background, or cancel the run in progress."""
        if self.logic.isGrading():
            self.onCancel()
            return
        backend = self._parameterNode.backend.pipelineValue()
        # No wait cursor here: installing asks the user first.
        with slicer.util.tryWithErrorDisplay(_("Required Python packages are not available.")):
            self.logic.ensureDependencies(backend)
        entry = self.currentPackageEntry()
        modality = self._parameterNode.modality.pipelineValue()
        region = self._parameterNode.region.pipelineValue()
        mismatches = self.logic.compatibilityMismatches(entry, self._parameterNode.inputVolume, modality, region)
        allowMismatch = False
        if mismatches:
            # the grader refuses such a study unless told otherwise: the user decides, knowing why
            if not slicer.util.confirmYesNoDisplay(
                    "\n\n".join(mismatches) + "\n\n" + _("Grade with this model package anyway?"),
                    windowTitle=_("Model package made for other studies")):
                return
            allowMismatch = True
        with slicer.util.tryWithErrorDisplay(_("Grading could not start."), waitCursor=True):
            self.logic.startGrading(
                self._parameterNode.inputVolume,
                packagePath=None if entry.is_default else str(entry.path),
                modality=modality,
                region=region,
                backend=backend,
                allowModelMismatch=allowMismatch,
            )
        self.ui.statusLabel.text = _("Grading in the background; the application stays usable.")
        self.ui.changesLabel.text = ""
        self.setRunning(True)

    def onCancel(self) -> None:
        self.logic.cancelGrading()
        self.setRunning(False)
        self.ui.statusLabel.text = _("Grading was cancelled; the scene is unchanged.")

    def stageLabel(self, stage: str) -> str:
        return {
            "read": _("Reading the study"),
            "detect": _("Finding the spinal canal"),
            "levels": _("Finding the disc levels"),
            "grade": _("Grading the levels"),
            "write": _("Writing the results"),
            "done": _("Loading the results"),
        }.get(stage, stage)

    def onPollTimer(self) -> None:
        """Show the run's progress; when it has ended, show its result or why it failed."""
        if not self.logic.isGrading():
            self.setRunning(False)
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Grading failed.")):
                reports = self.logic.pollGrading()
        except Exception:
            # the run failed, or its result could not be loaded (possibly after some of it was): no claim
            # about the scene here
            self.ui.statusLabel.text = _("Grading failed: see the error message.")
            raise
        finally:
            if not self.logic.isGrading():
                self.setRunning(False)
        if reports:
            last = reports[-1]
            self.ui.progressBar.value = round(100 * last.fraction)
            self.ui.progressBar.format = _("{stage}: %p%").format(stage=self.stageLabel(last.stage))
        if self.logic.isGrading():
            return
        review = self.logic.lastReview
        self._shownVolumeID = review.volume_node.GetID() if review.volume_node else None
        self.showReview(review)
        result = review.result()
        status = _("{count} disc levels graded in {seconds:.0f} s.").format(
            count=len(result.levels), seconds=self.logic.lastRunSeconds)
        if result.warnings:
            status += "\n" + "\n".join(result.warnings)
        self.ui.statusLabel.text = status
        if self.logic.lastChanges:
            self.ui.changesLabel.text = _("Re-run; your corrections are kept. What changed:") + "\n" + \
                "\n".join(self.logic.lastChanges)
        elif self.logic.lastRunWasRerun:
            self.ui.changesLabel.text = _("Re-run; your corrections are kept. No level changed.")
        self.logic.showResultTable(review)

    # Results table

    def showReview(self, review) -> None:
        """Show ``review`` (a SpineStenosisGraderLib.review.review.StudyReview) in the panel, or nothing."""
        self._review = review
        self.updateResultsTable()

    def selectedRoi(self):
        row = self.ui.resultsTableWidget.currentRow()
        if self._review is None or not 0 <= row < len(self._rowRoiIDs):
            return None
        return slicer.mrmlScene.GetNodeByID(self._rowRoiIDs[row])

    def updateResultsTable(self) -> None:
        """One row per level: name, AI grade, the clinician's grade (editable), edited."""
        table = self.ui.resultsTableWidget
        selectedID = None
        selected = self.selectedRoi()
        if selected is not None:
            selectedID = selected.GetID()
        self._updatingTable = True
        try:
            self.observeLevelRois([])
            table.clearContents()
            table.setRowCount(0)
            self._rowRoiIDs = []
            review = self._review
            if review is not None and review.table_node.GetScene() is None:
                # the run was deleted (Data module): show whatever run the volume still has
                volume = self._parameterNode.inputVolume if self._parameterNode else None
                review = self._review = self.logic.reviewForVolume(volume) if volume else None
            if review is None:
                self.ui.runInfoLabel.text = _("No grading run for this volume yet.")
                return
            result = review.result()
            rois = review.level_rois()
            scale = review.scale()
            table.setRowCount(len(rois))
            for row, (roi, level) in enumerate(zip(rois, result.levels)):
                self._rowRoiIDs.append(roi.GetID())
                self.fillResultsRow(row, review, roi, level, scale)
            self.observeLevelRois(rois)
            if selectedID in self._rowRoiIDs:
                table.selectRow(self._rowRoiIDs.index(selectedID))
            self.ui.runInfoLabel.text = _("{model} {version}. {numbering}").format(
                model=result.model.name, version=result.model.version, numbering=result.study.numbering)
        finally:
            self._updatingTable = False
            self.updateCorrectionButtons()

    def fillResultsRow(self, row: int, review, roi, level, scale) -> None:
        table = self.ui.resultsTableWidget
        nameItem = qt.QTableWidgetItem(roi.GetName())
        status = self.logic.nameStatus(level)
        if status:
            # the name is a count from the end of the study, not read from a landmark: say so beside it
            statusText = {"not anchored": _("not anchored"), "name unsure": _("name unsure")}.get(status, status)
            nameItem.setText(_("{name} ({status})").format(name=roi.GetName(), status=statusText))
            nameItem.setToolTip(review.result().study.numbering)
        table.setItem(row, self.LEVEL_COLUMN, nameItem)

        grade = level.grade
        stale = review.grade_is_stale(roi)
        if grade is None:
            aiText = _("not graded")
            aiTip = (_("Added by hand: Re-grade selected level grades its box.") if stale
                     else _("The model package does not grade this region."))
        else:
            aiText = "{grade} ({probability:.2f})".format(grade=grade.grade, probability=grade.probability)
            probabilities = ", ".join("{name} {p:.2f}".format(name=name, p=p) for name, p in grade.probabilities.items())
            aiTip = _("Probabilities: {probabilities}").format(probabilities=probabilities)
            if scale is not None and grade.grade in scale.names:
                aiTip = scale.grade_class(grade.grade).definition + "\n" + aiTip
            if grade.uncertain:
                # below the package's confidence threshold: this grade needs a human look
                aiText += " ?"
                aiTip += "\n" + _("Uncertain: check this level.")
            if stale:
                aiText += " " + _("(box changed)")
                aiTip += "\n" + _("The box changed since the model graded it: Re-grade selected level updates "
                                   "this grade.")
        aiItem = qt.QTableWidgetItem(aiText)
        aiItem.setToolTip(aiTip)
        table.setItem(row, self.AI_GRADE_COLUMN, aiItem)

        combo = qt.QComboBox()
        combo.addItem("", "")
        combo.setItemData(0, _("No clinician grade: the AI grade stands."), qt.Qt.ToolTipRole)
        if scale is not None:
            for gradeClass in scale.classes:
                combo.addItem(gradeClass.label, gradeClass.name)
                combo.setItemData(combo.count - 1, gradeClass.definition, qt.Qt.ToolTipRole)
        clinicianGrade = level.correction.grade if level.correction is not None else None
        if clinicianGrade:
            index = combo.findData(clinicianGrade)
            combo.currentIndex = max(index, 0)
        combo.toolTip = _("Your grade for {level}; the empty choice removes it.").format(level=roi.GetName())
        combo.enabled = scale is not None
        roiID = roi.GetID()
        combo.connect("currentIndexChanged(int)", lambda index, c=combo, r=roiID: self.onClinicianGradeChanged(r, c))
        table.setCellWidget(row, self.CLINICIAN_COLUMN, combo)

        editedItem = qt.QTableWidgetItem(_("edited") if review.is_edited(roi) else "")
        editedItem.setToolTip(_("A clinician changed this level's grade, name or box."))
        table.setItem(row, self.EDITED_COLUMN, editedItem)

    def observeLevelRois(self, rois: list) -> None:
        """Follow the level boxes of every run in the scene (``rois``, the shown run's, are among them), so
        that a box dragged in a view shows as edited and every run's table says so before the scene is saved."""
        for roi in self._observedRois:
            self.removeObserver(roi, vtk.vtkCommand.ModifiedEvent, self.onLevelRoiModified)
        ids = {roi.GetID() for roi in rois}
        self._observedRois = list(rois) + [roi for roi in self.logic.levelRois(slicer.mrmlScene)
                                           if roi.GetID() not in ids]
        for roi in self._observedRois:
            self.addObserver(roi, vtk.vtkCommand.ModifiedEvent, self.onLevelRoiModified)

    def onLevelRoiModified(self, caller, event) -> None:
        if not self._updatingTable:
            self._tableRefreshTimer.start()

    def onTableRefreshTimer(self) -> None:
        """A box was moved (or a level removed): every run's table follows, then the panel."""
        self.logic.refreshResultTables(slicer.mrmlScene)
        if self._review is not None:
            self.updateResultsTable()

    def onClinicianGradeChanged(self, roiID: str, combo) -> None:
        if self._updatingTable or self._review is None:
            return
        roi = slicer.mrmlScene.GetNodeByID(roiID)
        grade = combo.itemData(combo.currentIndex) or None
        with slicer.util.tryWithErrorDisplay(_("The grade was not changed.")):
            self._review.set_clinician_grade(roi, grade)
        # rebuilt once the combo has closed, not from inside its own signal
        self._tableRefreshTimer.start()

    def onResultsSelectionChanged(self) -> None:
        self.updateCorrectionButtons()
        roi = self.selectedRoi()
        if roi is not None and not self._updatingTable:
            self.logic.jumpToLevel(roi)

    def onResultsCellClicked(self, row: int, column: int) -> None:
        # clicking the row that is already selected centres the views again
        roi = self.selectedRoi()
        if roi is not None:
            self.logic.jumpToLevel(roi)

    def updateCorrectionButtons(self) -> None:
        hasReview = self._review is not None
        hasLevel = self.selectedRoi() is not None
        self.ui.placeRoiButton.enabled = hasReview and self._placingRoi is None
        for button in (self.ui.deleteLevelButton, self.ui.renameLevelButton, self.ui.reanchorButton,
                       self.ui.regradeButton):
            button.enabled = hasLevel
        self.ui.exportResultsButton.enabled = hasReview
        self.ui.exportAnnotationSetButton.enabled = hasReview

    # Correcting

    def onPlaceRoiButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot place a box.")):
            self._placingRoi = self.logic.startPlacingLevel(self._review)
            interactionNode = slicer.app.applicationLogic().GetInteractionNode()
            self.addObserver(interactionNode, interactionNode.EndPlacementEvent, self.onEndPlacement)
            self.ui.statusLabel.text = _("Click two opposite corners of the missing level's box on a slice view.")
        self.updateCorrectionButtons()

    def onEndPlacement(self, caller, event) -> None:
        """The user finished (or abandoned) placing the box: adopt it as a level, or remove it."""
        self.removeObserver(caller, caller.EndPlacementEvent, self.onEndPlacement)
        roi, self._placingRoi = self._placingRoi, None
        try:
            with slicer.util.tryWithErrorDisplay(_("The box was not added as a level.")):
                renamed = self.logic.finishPlacingLevel(self._review, roi)
                if renamed is None:
                    self.ui.statusLabel.text = _("No box was placed.")
                else:
                    status = _("Added level {name}.").format(name=roi.GetName())
                    if renamed:
                        status += " " + _("Renamed to make room: {changes}").format(changes=", ".join(
                            "{old} → {new}".format(old=old, new=new) for old, new in renamed.items()))
                    self.ui.statusLabel.text = status
        finally:
            self.updateResultsTable()

    def cancelPlacing(self) -> None:
        if self._placingRoi is None:
            return
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        self.removeObserver(interactionNode, interactionNode.EndPlacementEvent, self.onEndPlacement)
        roi, self._placingRoi = self._placingRoi, None
        self.logic.restorePlaceModePersistence()
        if roi.GetScene() is not None:
            roi.GetScene().RemoveNode(roi)

    def onDeleteLevelButton(self) -> None:
        roi = self.selectedRoi()
        if roi is None:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("Remove level {name} from this run? Its box and grades are deleted.").format(name=roi.GetName())):
            return
        with slicer.util.tryWithErrorDisplay(_("The level was not removed.")):
            self._review.remove_level(roi)
        self.updateResultsTable()

    def askLevelName(self, title: str, label: str, current: str) -> str:
        """A disc name from a list the user can also type into; empty if cancelled.

        A dialog object, not QInputDialog.getItem: through PythonQt getItem cannot say whether
        the user cancelled (it returns the current item either way), and Cancel must cancel.
        """
        dialog = qt.QInputDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(title)
        dialog.setLabelText(label)
        dialog.setComboBoxItems(self.logic.levelNames())
        dialog.setComboBoxEditable(True)
        dialog.setTextValue(current)
        if dialog.exec_() != qt.QDialog.Accepted:
            return ""
        return dialog.textValue().strip()

    def onRenameLevelButton(self) -> None:
        roi = self.selectedRoi()
        if roi is None:
            return
        name = self.askLevelName(_("Rename level"), _("New name of level {name}:").format(name=roi.GetName()),
                                 roi.GetName())
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("The level was not renamed.")):
            self._review.rename_level(roi, name)
        self.updateResultsTable()

    def onReanchorButton(self) -> None:
        roi = self.selectedRoi()
        if roi is None:
            return
        name = self.askLevelName(
            _("This level is…"),
            _("Which disc is the level now called {name}? Every level's name shifts with it.").format(
                name=roi.GetName()),
            roi.GetName())
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("The levels were not renamed.")):
            renamed = self._review.reanchor(roi, name)
            self.ui.statusLabel.text = _("Renamed: {changes}").format(
                changes=", ".join("{old} → {new}".format(old=old, new=new) for old, new in renamed.items()
                                  if old != new) or _("nothing changed"))
        self.updateResultsTable()

    def onRegradeButton(self) -> None:
        roi = self.selectedRoi()
        if roi is None:
            return
        backend = self._parameterNode.backend.pipelineValue()
        with slicer.util.tryWithErrorDisplay(_("Required Python packages are not available.")):
            self.logic.ensureDependencies(backend)
        with slicer.util.tryWithErrorDisplay(_("The level was not re-graded."), waitCursor=True):
            prediction = self.logic.regradeLevel(self._review, roi, backend)
            self.ui.statusLabel.text = _("{level} re-graded: {grade} ({probability:.2f}).").format(
                level=roi.GetName(), grade=prediction.grade, probability=prediction.probability)
        self.updateResultsTable()

    # Export

    def askFolder(self, settingsKey: str, caption: str) -> str:
        settings = qt.QSettings()
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), caption, settings.value(settingsKey, qt.QDir.homePath()))
        if folder:
            settings.setValue(settingsKey, folder)
        return folder

    def onExportResultsButton(self) -> None:
        folder = self.askFolder("SpineStenosisGrader/ExportFolder", _("Export the results into a folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("The results were not exported."), waitCursor=True):
            written = self.logic.exportResults(self._review, folder)
            self.ui.statusLabel.text = _("{count} files written to {folder}.").format(count=len(written),
                                                                                     folder=folder)

    def onExportAnnotationSetButton(self) -> None:
        folder = self.askFolder("SpineStenosisGrader/AnnotationSetFolder",
                                _("Export the annotation set into a folder"))
        if not folder:
            return
        includePatientInfo = self._parameterNode.includePatientInfo
        with slicer.util.tryWithErrorDisplay(_("The annotation set was not exported."), waitCursor=True):
            written = self.logic.exportAnnotationSet(self._review, folder, includePatientInfo)
            # a folder that holds other files gets the set in a new subfolder: say where it went
            setFolder = os.path.dirname(str(written[0])) if written else folder
            self.ui.statusLabel.text = _("Annotation set ({patient}): {count} files written to {folder}.").format(
                patient=_("with patient name and ID") if includePatientInfo else _("without patient name or ID"),
                count=len(written), folder=setFolder)


#
# SpineStenosisGraderLogic
#


class SpineStenosisGraderLogic(ScriptedLoadableModuleLogic):
    """Grades a volume node in a background process and keeps its review in the scene.

    Thin on purpose: the grading process is SpineStenosisGraderLib.review.background (the library's
    command line, run with PythonSlicer), and the scene side is SpineStenosisGraderLib.review.review
    (runs without Qt). Raises exceptions and shows no dialog, except that ensureDependencies()
    asks before installing packages. Process handling is start/poll/cancel, so that the caller
    decides how to wait: the Widget polls from a timer, scripts and tests call gradeAndWait().
    """

    #: installed through the PyTorch extension (PyTorchUtils), never by a plain pip install
    TORCH_PACKAGES = ("torch", "torchvision")
    #: what the PyTorch backend needs beyond torch itself (the networks, and weights read without pickle)
    TORCH_BACKEND_REQUIREMENTS = ("timm>=1.0", "safetensors>=0.4")
    #: bundled with Slicer: never installed or replaced by this module
    SLICER_BUNDLED_PACKAGES = ("numpy", "simpleitk", "scipy")

    def __init__(self, packagesRoot: Optional[str] = None, tempRoot: Optional[str] = None) -> None:
        """
        :param packagesRoot: folder of imported model packages (default: beside the user's Slicer settings)
        :param tempRoot: where grading runs keep their files (default: Slicer's temporary folder)
        """
        ScriptedLoadableModuleLogic.__init__(self)
        self._packagesRoot = packagesRoot
        self._tempRoot = tempRoot
        self._run = None
        self._runVolume = None
        self._runSource = ""
        #: after a successful run: its review (SpineStenosisGraderLib.review.review.StudyReview), what changed if it
        #: was a re-run, and how long it took
        self.lastReview = None
        self.lastChanges = []
        self.lastRunWasRerun = False
        self.lastRunSeconds = 0.0
        #: (interaction node, its place-mode persistence) while a level box is being placed
        self._placeModePersistence = None

    def getParameterNode(self):
        return SpineStenosisGraderParameterNode(super().getParameterNode())

    @staticmethod
    def resourcePath(relativePath: str) -> str:
        """Absolute path of a file in the module's Resources folder."""
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)

    def packagesRoot(self) -> str:
        """Where imported model packages live: beside the user's settings, so that they outlive a Slicer update."""
        if self._packagesRoot is None:
            settingsFolder = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
            self._packagesRoot = os.path.join(settingsFolder, "SpineStenosisGrader", "Models")
        return self._packagesRoot

    def tempRoot(self) -> str:
        if self._tempRoot is None:
            self._tempRoot = os.path.join(slicer.app.temporaryPath, "SpineStenosisGrader")
        return self._tempRoot

    # Dependencies

    def requirements(self, backend: Optional[str] = None) -> list:
        """Requirement strings to install with pip for ``backend``: Resources/requirements.txt and, for the
        PyTorch backend, what it needs beyond torch; never torch itself nor what Slicer bundles."""
        requirements = []
        with open(self.resourcePath("requirements.txt"), encoding="utf-8") as requirementsFile:
            for line in requirementsFile:
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    requirements.append(line)
        if backend == "torch":
            requirements += list(self.TORCH_BACKEND_REQUIREMENTS)
        excluded = set(self.TORCH_PACKAGES + self.SLICER_BUNDLED_PACKAGES)
        kept = []
        for requirement in requirements:
            name = self.requirementName(requirement)
            if name not in excluded:
                excluded.add(name)  # once each: requirements.txt may already list what the backend needs
                kept.append(requirement)
        return kept

    @staticmethod
    def requirementName(requirement: str) -> str:
        import re

        return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")

    @staticmethod
    def isRequirementSatisfied(requirement: str) -> bool:
        """True if the package is installed in a version the requirement accepts."""
        import importlib.metadata

        name = SpineStenosisGraderLogic.requirementName(requirement)
        try:
            installedVersion = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return False
        try:
            from packaging.requirements import Requirement
        except ImportError:
            # Without "packaging" the version cannot be compared; being installed has to do.
            return True
        return Requirement(requirement).specifier.contains(installedVersion, prereleases=True)

    def ensureDependencies(self, backend: Optional[str] = None) -> None:
        """Make sure what grading with ``backend`` needs is installed, asking the user first.

        Call this from a user action (Apply), never at import time. The packages of
        requirements.txt (ONNX Runtime and what the results need) go through
        slicer.packaging.pip_ensure (Slicer 5.11 and later) or, on older Slicer,
        slicer.util.pip_install after a confirmation. PyTorch is optional: only when
        ``backend`` is "torch" is it installed, through the PyTorch extension, which
        picks the build that fits the machine's GPU.
        Raises RuntimeError if something is missing and is not installed.
        """
        requirements = self.requirements(backend)
        if backend == "torch":
            self.ensureTorch()
        if not requirements:
            return
        pipEnsure = self.slicerPipEnsure()
        if pipEnsure is not None:
            pipEnsure(requirements, requester="SpineStenosisGrader")
            return

        missing = self.missingRequirements(backend)
        if not missing:
            return
        message = _("Spine Stenosis Grader needs these Python packages:\n\n{packages}\n\n"
                    "Install them now? This may take a few minutes.").format(packages="\n".join(missing))
        if not slicer.util.confirmOkCancelDisplay(message):
            raise RuntimeError(_("Installation of {packages} was cancelled.").format(packages=", ".join(missing)))
        # A list keeps each specifier one argument (">=" needs no shell quoting).
        slicer.util.pip_install(missing)

    def missingRequirements(self, backend: Optional[str] = None) -> list:
        """The requirements for ``backend`` that are not installed in a version they accept."""
        return [r for r in self.requirements(backend) if not self.isRequirementSatisfied(r)]

    @staticmethod
    def slicerPipEnsure():
        """slicer.packaging.pip_ensure (Slicer 5.11 and later), or None on older Slicer.

        Imported by name: an ``import slicer.packaging`` statement in a function would make
        ``slicer`` a local name of that function, and every other use of ``slicer`` in it
        (slicer.util on older Slicer) would raise UnboundLocalError.
        """
        import importlib

        try:
            packaging = importlib.import_module("slicer.packaging")
        except ImportError:
            return None
        return getattr(packaging, "pip_ensure", None)

    def ensureTorch(self) -> None:
        """Install PyTorch through the PyTorch extension if it is missing (only for the PyTorch backend)."""
        if all(self.isRequirementSatisfied(name) for name in self.TORCH_PACKAGES):
            return
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_(
                "The PyTorch backend needs PyTorch. Install the \"PyTorch\" extension from the Extensions "
                "Manager and restart Slicer, or choose the Automatic or ONNX Runtime backend.",
            )) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
        if torch is None:
            raise RuntimeError(_("PyTorch was not installed."))

    # Model packages

    def installedPackages(self) -> list:
        """The embedded default and the imported packages (SpineStenosisGraderLib.packages.installed_packages)."""
        from SpineStenosisGraderLib.packages.installed_packages import installed_packages

        return installed_packages(self.packagesRoot())

    def importPackage(self, source: str):
        """Import a package folder or .zip (SHA256 verified) into packagesRoot(); returns its entry."""
        from SpineStenosisGraderLib.packages.package import import_package

        package = import_package(source, self.packagesRoot())
        entry = next((entry for entry in self.installedPackages() if entry.usable
                      and os.path.samefile(entry.path, package.path)), None)
        if entry is None:
            raise RuntimeError(_("The model package was imported into {folder}, but it is not listed as usable there. "
                                 "Remove that folder and import the package again.").format(folder=package.path))
        return entry

    @staticmethod
    def packageTasks(entry) -> list:
        from SpineStenosisGraderLib.packages.installed_packages import package_tasks

        return package_tasks(entry.package)

    @staticmethod
    def packageFacts(entry) -> dict:
        from SpineStenosisGraderLib.packages.installed_packages import manifest_facts

        return manifest_facts(entry.package.manifest)

    def compatibilityWarnings(self, entry, volumeNode, modality: Optional[str], region: Optional[str]) -> list:
        """Why ``entry``'s package may not suit the study: modality and region as set, else as known.

        What is not set is taken from the volume's DICOM header (modality) or from the
        volume's last grading run (both), and left unchecked when still unknown.
        """
        review = self.reviewForVolume(volumeNode)
        study = review.result().study if review is not None else None
        modality = modality or self.dicomModality(volumeNode) or (study.modality if study else "")
        region = region or (study.region if study else "")
        warnings = entry.package.compatibility_warnings(modality or "", region or "")
        # the modality part of the package's grade scope, said before Apply; the axial pixel is known only once the
        # grader has read the volume as axial slices, and the run's own warning then says it
        withheld = entry.package.grade_scope_problem(modality, None) if modality else None
        if withheld:
            warnings.append(withheld + " " + _("The levels will be located but not graded."))
        return warnings

    def compatibilityMismatches(self, entry, volumeNode, modality: Optional[str], region: Optional[str]) -> list:
        """Why the grader would refuse ``entry``'s package for this study: the modality as set or in the
        DICOM header, the region as set (a region read from the anatomy is never a reason to refuse)."""
        modality = modality or self.dicomModality(volumeNode) or ""
        return entry.package.compatibility_mismatches(modality, region or "")

    # Grading

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python launcher (PythonSlicer), which runs the grader with Slicer's packages."""
        import shutil

        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = os.path.join(slicer.app.slicerHome, "bin", "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
        if os.path.isfile(candidate):
            return candidate
        raise RuntimeError(_("PythonSlicer was not found in {folder}; reinstall Slicer.").format(
            folder=os.path.dirname(candidate)))

    @staticmethod
    def volumeImage(volumeNode):
        """The volume as a SimpleITK image in patient coordinates (LPS)."""
        import sitkUtils

        return sitkUtils.PullVolumeFromSlicer(volumeNode)

    @staticmethod
    def subjectHierarchyItem(volumeNode):
        """(subject hierarchy node, the volume's item), the item 0 when the volume has none."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
        return shNode, shNode.GetItemByDataNode(volumeNode) if shNode is not None else 0

    @classmethod
    def dicomModality(cls, volumeNode) -> Optional[str]:
        """"CT" or "MR" from the DICOM series the volume was loaded from, if it was and says so."""
        shNode, itemID = cls.subjectHierarchyItem(volumeNode)
        if not itemID:
            return None
        modality = shNode.GetItemAttribute(
            itemID, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName())
        return modality if modality in ("CT", "MR") else None

    @classmethod
    def patientIdentifiers(cls, volumeNode) -> dict:
        """The patient's name and ID from the DICOM patient the volume belongs to, as DICOM tags (may be empty)."""
        from SpineStenosisGraderLib.review.review import PATIENT_ID_TAG, PATIENT_NAME_TAG

        constants = slicer.vtkMRMLSubjectHierarchyConstants
        shNode, itemID = cls.subjectHierarchyItem(volumeNode)
        patientID = shNode.GetItemAncestorAtLevel(itemID, constants.GetDICOMLevelPatient()) if itemID else 0
        if not patientID:
            return {}
        values = {
            PATIENT_NAME_TAG: shNode.GetItemAttribute(patientID, constants.GetDICOMPatientNameAttributeName()),
            PATIENT_ID_TAG: shNode.GetItemAttribute(patientID, constants.GetDICOMPatientIDAttributeName()),
        }
        return {tag: value for tag, value in values.items() if value}

    @staticmethod
    def volumeSource(volumeNode) -> str:
        """What the result names as its source: the volume's file, else the volume's name."""
        storageNode = volumeNode.GetStorageNode()
        if storageNode is not None and storageNode.GetFileName():
            return storageNode.GetFileName()
        return volumeNode.GetName()

    @staticmethod
    def checkVolume(volumeNode) -> None:
        if not volumeNode or volumeNode.GetImageData() is None:
            raise ValueError(_("Select an input volume that holds an image."))
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(_("{name} is a label map, not a CT or MR image. Select the study's image volume.").format(
                name=volumeNode.GetName()))
        if volumeNode.GetParentTransformNode() is not None:
            # the image is read without its transform, so boxes would land beside the anatomy
            raise ValueError(_("The volume is under a transform. Harden the transform (Data module: right-click "
                               "the transform, Harden transform) before grading."))

    def isGrading(self) -> bool:
        return self._run is not None

    def startGrading(self, inputVolume: vtkMRMLScalarVolumeNode, packagePath: Optional[str] = None,
                     modality: Optional[str] = None, region: Optional[str] = None,
                     backend: Optional[str] = None, allowModelMismatch: bool = False):
        """Start grading ``inputVolume`` in a background process and return at once.

        :param packagePath: model package folder; None for the embedded default
        :param modality: "CT" or "MR", or None to take it from the DICOM header or the image
        :param region: "lumbar", "thoracic" or "cervical", or None to read it from the anatomy
        :param backend: "onnx" or "torch", or None / "auto" to let the package decide
        :param allowModelMismatch: grade even with a package made for another modality or region
        :return: the run (SpineStenosisGraderLib.review.background.GradingRun); call pollGrading() until isGrading()
                 is False, or cancelGrading()
        """
        if self.isGrading():
            raise RuntimeError(_("A study is being graded already; cancel it first."))
        self.checkVolume(inputVolume)
        from SpineStenosisGraderLib.review.background import GradingRun, process_environment

        run = GradingRun.for_image(
            self.volumeImage(inputVolume), self.pythonExecutable(), packagePath,
            modality=modality or self.dicomModality(inputVolume), region=region, backend=backend,
            temp_root=self.tempRoot(), env=process_environment(), allow_model_mismatch=allowModelMismatch,
        )
        logging.info("Spine stenosis grading started: {command}".format(command=" ".join(run.command)))
        run.start()
        self._run = run
        self._runVolume = inputVolume
        self._runSource = self.volumeSource(inputVolume)
        return run

    def pollGrading(self) -> list:
        """The progress reported since the last call (SpineStenosisGraderLib.review.background.GradingProgress).

        When the run has ended, isGrading() becomes False and its files are removed. On
        success the result is in the scene (lastReview, lastChanges); on failure this
        raises RuntimeError with the grader's own message and the scene is unchanged.
        """
        run = self._run
        if run is None:
            return []
        reports = run.poll()
        if not run.state.finished:
            return reports
        from SpineStenosisGraderLib.review.background import RunState

        volume, self._run, self._runVolume = self._runVolume, None, None
        try:
            for line in run.warnings:
                logging.warning(line)
            if run.state is not RunState.SUCCEEDED:
                raise RuntimeError(run.error)
            if volume.GetScene() is None:
                raise RuntimeError(_("The volume was removed from the scene while it was graded; "
                                     "its result was not loaded."))
            result = run.result()
            result.study.source = self._runSource
            self.lastReview, self.lastChanges, self.lastRunWasRerun = self.loadResult(result, volume)
            self.lastRunSeconds = run.elapsed_s
            logging.info("Spine stenosis grading completed in {seconds:.1f} s: {count} levels".format(
                seconds=self.lastRunSeconds, count=len(result.levels)))
        finally:
            run.cleanup()
        return reports

    def cancelGrading(self) -> None:
        """Stop the run now: its process is killed, its files removed, and the scene is left as it was."""
        run, self._run, self._runVolume = self._run, None, None
        if run is not None:
            run.cancel()
            logging.info("Spine stenosis grading cancelled")

    def gradeAndWait(self, inputVolume: vtkMRMLScalarVolumeNode, timeoutSeconds: float = 900.0,
                     progress=None, **options):
        """Grade ``inputVolume`` through the same background process, waiting for it (scripts and tests).

        :param progress: called with each GradingProgress report
        :param options: as startGrading()
        :return: the run's review (SpineStenosisGraderLib.review.review.StudyReview)
        """
        import time

        self.startGrading(inputVolume, **options)
        deadline = time.monotonic() + timeoutSeconds
        while self.isGrading():
            for report in self.pollGrading():
                if progress:
                    progress(report)
            if not self.isGrading():
                break
            if time.monotonic() > deadline:
                self.cancelGrading()
                raise TimeoutError(_("Grading took longer than {seconds:.0f} s and was cancelled.").format(
                    seconds=timeoutSeconds))
            time.sleep(0.1)
        return self.lastReview

    def loadResult(self, result, volumeNode):
        """Put ``result`` (a StudyResult) in the scene for ``volumeNode``.

        The first run of a volume makes a new review; a later one merges into the newest
        review, keeping every clinician correction.
        :return: (review, the changes a re-run made, whether it was a re-run)
        """
        from SpineStenosisGraderLib.review.review import StudyReview

        scene = volumeNode.GetScene()
        reviews = StudyReview.in_scene(scene, volumeNode)
        if reviews:
            review = reviews[-1]
            return review, review.merge_rerun(result), True
        # the package's scale, so that a clinician can grade levels the model left ungraded (a CT, a T1)
        entry = self.installedPackageOf(result.model)
        scale = entry.package.scale.key if entry is not None else None
        return StudyReview.create(scene, result, volumeNode, scale=scale), [], False

    def installedPackageOf(self, model):
        """The usable installed package entry that made a result (``model``: its ModelInfo), or None."""
        return next((entry for entry in self.installedPackages() if entry.usable
                     and entry.package.name == model.name and entry.package.version == model.version), None)

    @staticmethod
    def reviewForVolume(volumeNode):
        """The newest grading run of ``volumeNode`` in its scene, or None."""
        if volumeNode is None or volumeNode.GetScene() is None:
            return None
        from SpineStenosisGraderLib.review.review import StudyReview

        reviews = StudyReview.in_scene(volumeNode.GetScene(), volumeNode)
        return reviews[-1] if reviews else None

    @staticmethod
    def nameStatus(level) -> str:
        """'not anchored' or 'name unsure' when the level's name is not fixed by a landmark or the clinician, else ''."""
        from SpineStenosisGraderLib.outputs.report import name_status

        return name_status(level)

    @staticmethod
    def refreshResultTables(scene) -> None:
        """Bring every run's table node up to date with its boxes (after a box was moved)."""
        from SpineStenosisGraderLib.review.review import StudyReview

        for review in StudyReview.in_scene(scene):
            review.refresh_table()

    @staticmethod
    def levelRois(scene) -> list:
        """The level ROIs of every grading run in ``scene``."""
        from SpineStenosisGraderLib.review.review import StudyReview

        return [roi for review in StudyReview.in_scene(scene) for roi in review.level_rois()]

    @staticmethod
    def showResultTable(review) -> None:
        """Show the run's table beside the views."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(review.table_node.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    @staticmethod
    def jumpToLevel(roi) -> None:
        """Centre the slice views on the level's box; the axial view then shows the level's slice."""
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        slicer.modules.markups.logic().JumpSlicesToLocation(center[0], center[1], center[2], True)

    # Correcting

    @staticmethod
    def levelNames() -> list:
        from SpineStenosisGraderLib.inference.levels import SPINE_DISCS

        return list(SPINE_DISCS)

    def startPlacingLevel(self, review):
        """A new box ROI the user places with the mouse (two opposite corners); adopt it with finishPlacingLevel().

        The place mode is set to end after this one box; finishPlacingLevel() puts back the user's setting.
        """
        if review is None:
            raise ValueError(_("Grade the volume first: a new level joins a grading run."))
        scene = review.table_node.GetScene()
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(_("New level")))
        roi.CreateDefaultDisplayNodes()
        roi.SetROIType(slicer.vtkMRMLMarkupsROINode.ROITypeBox)
        selectionNode = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        interactionNode = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selectionNode.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selectionNode.SetReferenceActivePlaceNodeID(roi.GetID())
        if self._placeModePersistence is None:
            self._placeModePersistence = (interactionNode, interactionNode.GetPlaceModePersistence())
        interactionNode.SetPlaceModePersistence(0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)
        return roi

    def restorePlaceModePersistence(self) -> None:
        """Put back the place-mode persistence startPlacingLevel() changed."""
        saved, self._placeModePersistence = self._placeModePersistence, None
        if saved is not None:
            interactionNode, persistence = saved
            interactionNode.SetPlaceModePersistence(persistence)

    def finishPlacingLevel(self, review, roi) -> Optional[dict]:
        """Adopt the placed ``roi`` as a new level of ``review``, named from where it lies.

        The ROI is removed if no box was placed, or if it cannot be added (then the error is raised).
        :return: None if no box was placed, else ``{old name: new name}`` of the levels renamed to make room
        """
        self.restorePlaceModePersistence()
        if roi is None or roi.GetScene() is None:
            return None
        if review is None or min(roi.GetSize()) <= 0.0:
            roi.GetScene().RemoveNode(roi)
            return None
        try:
            return review.add_level(roi)
        except BaseException:
            if roi.GetScene() is not None:
                roi.GetScene().RemoveNode(roi)
            raise

    def packageForRun(self, review, backend: Optional[str] = None):
        """The installed package that graded ``review``'s run (same name and version), loaded for ``backend``."""
        from SpineStenosisGraderLib.packages.package import load_package

        model = review.result().model
        entry = self.installedPackageOf(model)
        if entry is not None:
            return load_package(entry.path, backend or "auto")
        raise RuntimeError(_("The model package that graded this run ({name} {version}) is not installed. "
                             "Import it, or run the study again with the package you have.").format(
                                 name=model.name, version=model.version))

    def axialStack(self, review):
        """The graded volume as the library's axial stack (for re-grading and report pictures)."""
        from SpineStenosisGraderLib.study.volume import to_axial_stack

        if review.volume_node is None or review.volume_node.GetScene() is None:
            raise RuntimeError(_("The graded volume is no longer in the scene."))
        return to_axial_stack(self.volumeImage(review.volume_node), source=self.volumeSource(review.volume_node))

    def regradeLevel(self, review, roi, backend: Optional[str] = None):
        """Grade ``roi``'s box alone, as it is now, with the package that graded the run.

        The AI grade of the level is replaced; the clinician's grade is kept.
        :return: the new GradePrediction
        """
        return review.regrade_level(roi, self.axialStack(review), self.packageForRun(review, backend))

    # Export

    def exportResults(self, review, folder: str) -> list:
        """result.json, levels.csv (AI and clinician side by side), .mrk.json per level, report.html."""
        stack = self.axialStack(review) if review.volume_node is not None else None
        return review.export(folder, stack)

    def exportAnnotationSet(self, review, folder: str, includePatientInfo: bool = False) -> list:
        """Training data: the volume, the boxes with their final grades, the provenance; no patient
        name or ID unless ``includePatientInfo``."""
        volume = review.volume_node
        if volume is None or volume.GetScene() is None:
            raise RuntimeError(_("The graded volume is no longer in the scene."))
        image = self.volumeImage(volume)
        if includePatientInfo:
            # the voxels come from the scene, without the DICOM header: the patient comes from the Data module
            for tag, value in self.patientIdentifiers(volume).items():
                image.SetMetaData(tag, value)
        return review.export_annotation_set(folder, image, include_patient_info=includePatientInfo)


#
# SpineStenosisGraderTest
#


class SpineStenosisGraderTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here.

        Grading needs the packages of Resources/requirements.txt. A test does not install them
        (slicer.packaging.pip_ensure installs nothing while testing, so that tests leave the
        Python environment as it was); without them the grading tests are skipped, and say so.
        """
        missing = self.makeLogic().missingRequirements()
        if missing:
            message = _("The grading tests were skipped: the Python packages {packages} are not installed. "
                        "Press Apply in the module once to install them, then run the test again.").format(
                            packages=", ".join(missing))
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.setUp()
        self.test_CancelLeavesTheSceneUnchanged()
        self.setUp()
        self.test_GradeCorrectSaveAndReload()

    def loadSample(self):
        import SampleData

        registerSampleData()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(volume)
        self.assertIsNotNone(volume.GetImageData())
        return volume

    @staticmethod
    def makeLogic():
        """A Logic whose imported-packages folder is empty, so that the user's packages play no part."""
        import tempfile

        return SpineStenosisGraderLogic(packagesRoot=tempfile.mkdtemp(prefix="SpineStenosisGraderTestModels-"))

    def test_CancelLeavesTheSceneUnchanged(self):
        """Cancel stops the background run, removes its files and adds nothing to the scene."""
        import time

        volume = self.loadSample()
        logic = self.makeLogic()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()

        self.delayDisplay("Starting a run and cancelling it")
        run = logic.startGrading(volume)
        self.assertTrue(logic.isGrading())
        deadline = time.monotonic() + 120
        while run.progress is None and time.monotonic() < deadline:
            logic.pollGrading()
            time.sleep(0.05)
        logic.cancelGrading()
        self.assertFalse(logic.isGrading())
        self.assertFalse(os.path.exists(run.work_dir))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"), 0)

    def test_GradeCorrectSaveAndReload(self):
        """Grade the sample study, correct a grade, re-anchor the names, save a .mrb and reload it."""
        import re
        import tempfile

        from SpineStenosisGraderLib.inference.levels import name_levels
        from SpineStenosisGraderLib.outputs.report import effective_name
        from SpineStenosisGraderLib.review.review import StudyReview

        volume = self.loadSample()
        logic = self.makeLogic()

        self.delayDisplay("Grading the sample study in the background")
        stages = []
        review = logic.gradeAndWait(volume, progress=lambda report: stages.append(report.stage))
        self.assertEqual(stages[-1], "done")
        self.assertFalse(logic.lastRunWasRerun)

        result = review.result()
        rois = review.level_rois()
        # the sample reaches from T11 into the sacrum: five or more disc levels
        self.assertGreaterEqual(len(rois), 5)
        self.assertEqual(len(rois), len(result.levels))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"), len(rois))
        levelName = re.compile(r"^(C[2-7]-(C[3-7]|T1)|T([1-9]|1[01])-T([2-9]|1[0-2])|T12-L1|L[1-4]-L[2-5]|L5-S1"
                               r"|(below|above) .+)$")
        for roi, level in zip(rois, result.levels):
            self.assertEqual(roi.GetName(), level.name)
            self.assertRegex(roi.GetName(), levelName)
            self.assertEqual(roi.GetROIType(), slicer.vtkMRMLMarkupsROINode.ROITypeBox)
            self.assertTrue(all(s > 0 for s in roi.GetSize()))
            self.assertIsNotNone(level.grade)
        self.assertEqual(review.table_node.GetNumberOfRows(), len(rois))
        self.assertEqual(result.study.source, logic.volumeSource(volume))

        self.delayDisplay("Correcting a grade and re-anchoring the levels")
        corrected = rois[1]
        scale = review.scale()
        aiGrade = result.levels[1].grade.grade
        clinicianGrade = next(name for name in scale.names if name != aiGrade)
        review.set_clinician_grade(corrected, clinicianGrade)
        self.assertTrue(review.is_edited(corrected))
        # The sample's levels are named from the sacrum it contains, L5-S1 up to T12-L1. A clinician who
        # counts a transitional vertebra says the lowest level is L4-L5, and every name shifts with it.
        self.assertEqual(result.study.names_anchored_by, "sacrum")
        self.assertEqual([level.name for level in result.levels][:2], ["L5-S1", "L4-L5"])
        renamed = review.reanchor(rois[0], "L4-L5")
        expected = name_levels(len(rois), "lumbar", (0, "L4-L5"))
        self.assertEqual([roi.GetName() for roi in review.level_rois()], expected)
        self.assertEqual(renamed["L5-S1"], "L4-L5")
        self.assertEqual(logic.nameStatus(review.result().levels[0]), "")
        correctedName = corrected.GetName()

        self.delayDisplay("Saving and reloading the scene")
        sceneFile = os.path.join(tempfile.mkdtemp(prefix="SpineStenosisGraderTest-"), "graded.mrb")
        self.assertTrue(slicer.util.saveScene(sceneFile))
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(sceneFile)

        reviews = StudyReview.in_scene(slicer.mrmlScene)
        self.assertEqual(len(reviews), 1)
        reloaded = reviews[0]
        reloadedResult = reloaded.result()
        self.assertEqual([roi.GetName() for roi in reloaded.level_rois()], expected)
        levelsByName = {effective_name(level): level for level in reloadedResult.levels}
        self.assertEqual(levelsByName[correctedName].correction.grade, clinicianGrade)
        self.assertEqual(reloadedResult.model.name, result.model.name)
        self.assertEqual(reloadedResult.model.version, result.model.version)
        self.assertEqual(reloaded.table_node.GetNumberOfRows(), len(expected))
        self.assertTrue(reloaded.is_edited(reloaded.level_rois()[1]))

        self.delayDisplay("Re-running keeps the corrections")
        volume = reloaded.volume_node
        logic.gradeAndWait(volume)
        self.assertTrue(logic.lastRunWasRerun)
        rerun = logic.lastReview.result()
        self.assertEqual(len(StudyReview.in_scene(slicer.mrmlScene, volume)), 1)
        correctedAfterRerun = [level for level in rerun.levels
                               if level.correction is not None and level.correction.grade == clinicianGrade]
        self.assertEqual(len(correctedAfterRerun), 1)

        self.delayDisplay("Test passed")
