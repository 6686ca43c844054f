import enum
import logging
import os
from typing import Callable, Optional

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

# Only what Slicer bundles is imported here. The core library (SpineStenosisGraderLib) needs
# torch, which is installed on demand when the user presses Apply, so it is imported inside
# the methods that use it.

DOCUMENTATION_URL = "https://github.com/spine-stenosis-grader/SlicerSpineStenosisGrader#readme"


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
        self.parent.contributors = ["SpineStenosisGrader developers"]
        self.parent.helpText = _("""
Grades spinal canal stenosis on axial CT and T2 MRI of the lumbar and cervical spine.
It finds the spinal canal on each slice, groups the slices into intervertebral disc levels
(L1-L2 to L5-S1, C2-C3 to C7-T1), draws one box (Markups ROI) per level coloured by grade,
and lists the grades in a table.
<p><b>Not for clinical use.</b> The default model is trained on phantoms and public samples.</p>
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
This software is not for clinical use.
""").format(
            pubmedLumbarCT='<a href="https://pubmed.ncbi.nlm.nih.gov/38112156/">PMID 38112156</a>',
            pubmedLumbarMR='<a href="https://pubmed.ncbi.nlm.nih.gov/39487037/">PMID 39487037</a>',
        )


#
# SpineStenosisGraderParameterNode
#


class Modality(enum.Enum):
    """Imaging modality of the input; AUTO lets the core decide from the image."""

    AUTO = "auto"
    CT = "CT"
    MR = "MR"

    def label(self) -> str:
        # Called by the parameter node wrapper to fill the combo box.
        return {
            Modality.AUTO: _("Automatic"),
            Modality.CT: _("CT"),
            Modality.MR: _("MR (T2)"),
        }[self]

    def pipelineValue(self) -> Optional[str]:
        return None if self is Modality.AUTO else self.value


class BodyRegion(enum.Enum):
    """Spine region of the input; AUTO lets the core decide from the image."""

    AUTO = "auto"
    LUMBAR = "lumbar"
    CERVICAL = "cervical"

    def label(self) -> str:
        return {
            BodyRegion.AUTO: _("Automatic"),
            BodyRegion.LUMBAR: _("Lumbar"),
            BodyRegion.CERVICAL: _("Cervical"),
        }[self]

    def pipelineValue(self) -> Optional[str]:
        return None if self is BodyRegion.AUTO else self.value


@parameterNodeWrapper
class SpineStenosisGraderParameterNode:
    """
    The parameters needed by module.

    inputVolume - The axial CT or T2 MRI volume to grade.
    modality - CT or MR, or automatic.
    region - Lumbar or cervical spine, or automatic.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modality: Modality = Modality.AUTO
    region: BodyRegion = BodyRegion.AUTO


#
# SpineStenosisGraderWidget
#


class SpineStenosisGraderWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._processing = False

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

        # Keep the parameter node valid across scene close.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.ui.modelInfoLabel.text = self.logic.modelPackageSummary()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButtonState)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select a volume if nothing is selected yet, to save the user a click.
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SpineStenosisGraderParameterNode]) -> None:
        """Set and observe the parameter node, and bind it to the GUI."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButtonState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry a "SlicerParameterName" dynamic property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButtonState)
            self.updateApplyButtonState()

    def updateApplyButtonState(self, caller=None, event=None) -> None:
        if self._processing:
            self.ui.applyButton.enabled = False
        elif self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Find the disc levels and grade them")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False

    def onProgress(self, stage: str, fraction: float) -> None:
        """Show the core's progress; it runs in this thread, so let Qt repaint."""
        self.ui.statusLabel.text = _("{stage} ({percent}%)").format(stage=stage, percent=int(round(100 * fraction)))
        slicer.app.processEvents()

    def onApplyButton(self) -> None:
        """Install what is missing (asking first), then grade the selected volume."""
        # No wait cursor here: installing asks the user first.
        dependenciesReady = False
        with slicer.util.tryWithErrorDisplay(_("Required Python packages are not available.")):
            self.logic.ensureDependencies()
            dependenciesReady = True
        if not dependenciesReady:
            # tryWithErrorDisplay has shown the error; grading without the packages would only fail again
            return

        self._processing = True
        self.updateApplyButtonState()
        try:
            with slicer.util.tryWithErrorDisplay(_("Grading failed."), waitCursor=True):
                rois = self.logic.process(
                    self._parameterNode.inputVolume,
                    modality=self._parameterNode.modality.pipelineValue(),
                    region=self._parameterNode.region.pipelineValue(),
                    progress=self.onProgress,
                )
                self.ui.statusLabel.text = _("Disc levels graded: {count}.").format(count=len(rois))
                self.showResults(rois)
        finally:
            self._processing = False
            self.updateApplyButtonState()

    def showResults(self, rois: list) -> None:
        """Show the grades table beside the views."""
        if not rois:
            return
        table = rois[0].GetNodeReference(self.logic.tableReferenceRole())
        if table is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


#
# SpineStenosisGraderLogic
#


class SpineStenosisGraderLogic(ScriptedLoadableModuleLogic):
    """Runs the core pipeline on a volume node and puts the result in the scene.

    Thin on purpose: grading lives in SpineStenosisGraderLib.pipeline and the MRML work in
    SpineStenosisGraderLib.mrml (which runs without Qt). Raises exceptions, shows no dialog,
    except that ensureDependencies() asks before installing packages.
    """

    #: installed through the PyTorch extension (PyTorchUtils), never by a plain pip install
    TORCH_PACKAGES = ("torch", "torchvision")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._modelPackage = None
        #: StudyResult and axial stack (SpineStenosisGraderLib.volume.AxialStack) of the last process() call
        self.lastResult = None
        self.lastStack = None

    def getParameterNode(self):
        return SpineStenosisGraderParameterNode(super().getParameterNode())

    @staticmethod
    def resourcePath(relativePath: str) -> str:
        """Absolute path of a file in the module's Resources folder."""
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)

    @staticmethod
    def tableReferenceRole() -> str:
        from SpineStenosisGraderLib.mrml import TABLE_REFERENCE_ROLE

        return TABLE_REFERENCE_ROLE

    # Dependencies

    def requirements(self) -> list:
        """Requirement strings from Resources/requirements.txt (comments and options skipped)."""
        requirements = []
        with open(self.resourcePath("requirements.txt"), encoding="utf-8") as requirementsFile:
            for line in requirementsFile:
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    requirements.append(line)
        return requirements

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

    def ensureDependencies(self) -> None:
        """Make sure the packages in requirements.txt are installed, asking the user first.

        Call this from a user action (the Apply button), never at import time.
        torch and torchvision come from the PyTorch extension, which picks the build that
        matches the GPU; the rest through slicer.packaging.pip_ensure (Slicer 5.11 and later)
        or, on older Slicer, slicer.util.pip_install after a confirmation.
        Raises RuntimeError if something is missing and is not installed.
        """
        requirements = self.requirements()
        torchRequirements = [r for r in requirements if self.requirementName(r) in self.TORCH_PACKAGES]
        otherRequirements = [r for r in requirements if self.requirementName(r) not in self.TORCH_PACKAGES]
        self.ensureTorch(torchRequirements)
        if not otherRequirements:
            return

        try:
            import slicer.packaging

            pipEnsure = getattr(slicer.packaging, "pip_ensure", None)
        except ImportError:
            pipEnsure = None
        if pipEnsure is not None:
            pipEnsure(otherRequirements, requester="SpineStenosisGrader")
            return

        missing = [r for r in otherRequirements if not self.isRequirementSatisfied(r)]
        if not missing:
            return
        message = _("Spine Stenosis Grader needs these Python packages:\n\n{packages}\n\n"
                    "Install them now? This may take a few minutes.").format(packages="\n".join(missing))
        if not slicer.util.confirmOkCancelDisplay(message):
            raise RuntimeError(_("Installation of {packages} was cancelled.").format(packages=", ".join(missing)))
        # A list keeps each specifier one argument (">=" needs no shell quoting).
        slicer.util.pip_install(missing)

    def ensureTorch(self, torchRequirements: list) -> None:
        """Install torch/torchvision through the PyTorch extension if they are missing or too old."""
        missing = [r for r in torchRequirements if not self.isRequirementSatisfied(r)]
        if not missing:
            return
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_(
                "Spine Stenosis Grader needs PyTorch ({packages}). Install the \"PyTorch\" extension "
                "from the Extensions Manager, restart Slicer, and press Apply again.",
            ).format(packages=", ".join(missing))) from None

        versions = {}
        for requirement in torchRequirements:
            name = self.requirementName(requirement)
            versions[name] = requirement.strip()[len(name):].strip() or None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        try:
            torch = torchLogic.installTorch(
                askConfirmation=True,
                torchVersionRequirement=versions.get("torch"),
                torchvisionVersionRequirement=versions.get("torchvision"),
            )
        except TypeError:
            # Older PyTorch extensions take no torchvision requirement.
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=versions.get("torch"))
        if torch is None:
            raise RuntimeError(_("PyTorch was not installed."))

    # Grading

    def modelPackage(self):
        """The default model package (a SpineStenosisGraderLib.package.ModelPackage), loaded once."""
        if self._modelPackage is None:
            from SpineStenosisGraderLib.package import load_default_package

            self._modelPackage = load_default_package()
        return self._modelPackage

    def modelPackageSummary(self) -> str:
        """A few lines on the default model for the panel, always with the clinical-use caveat.

        Loading the package reads its manifest and checks its files' SHA256; it needs no torch,
        so this works before the dependencies are installed.
        """
        notForClinicalUse = _("Not for clinical use.")
        try:
            summary = self.modelPackage().summary()
        except Exception as error:  # a missing or damaged package is reported in the panel, not raised
            logging.warning("Default model package unavailable: {error}".format(error=error))
            return _("The default model package cannot be used: {error}").format(error=error) + "\n" + notForClinicalUse
        if "not for clinical use" not in summary.lower():
            summary += "\n" + notForClinicalUse
        return summary

    def process(self,
                inputVolume: vtkMRMLScalarVolumeNode,
                modality: Optional[str] = None,
                region: Optional[str] = None,
                progress: Optional[Callable[[str, float], None]] = None) -> list:
        """Grade ``inputVolume`` and add the result to its scene.

        :param modality: "CT" or "MR", or None to detect it
        :param region: "lumbar" or "cervical", or None to detect it
        :param progress: called with (stage, fraction done)
        :return: the level ROI nodes (vtkMRMLMarkupsROINode), inferior to superior as the core orders them
        """
        if not inputVolume or inputVolume.GetImageData() is None:
            raise ValueError(_("Select an input volume that holds an image."))

        import time

        import sitkUtils
        from SpineStenosisGraderLib.mrml import add_result_to_scene
        from SpineStenosisGraderLib.pipeline import grade_image

        startTime = time.time()
        logging.info("Spine stenosis grading started")

        image = sitkUtils.PullVolumeFromSlicer(inputVolume)
        storageNode = inputVolume.GetStorageNode()
        source = storageNode.GetFileName() if storageNode and storageNode.GetFileName() else inputVolume.GetName()
        result, axialStack = grade_image(
            image,
            package=self.modelPackage(),
            modality=modality,
            region=region,
            source=source,
            progress=progress,
        )
        self.lastResult = result
        self.lastStack = axialStack
        for warning in result.warnings:
            logging.warning(warning)

        scene = inputVolume.GetScene() or slicer.mrmlScene
        rois = add_result_to_scene(scene, result, inputVolume)

        logging.info("Spine stenosis grading completed in {seconds:.1f} s: {count} levels".format(
            seconds=time.time() - startTime, count=len(rois)))
        return rois


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
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_GradeLumbarPhantom()

    def test_GradeLumbarPhantom(self):
        """Grade a synthetic lumbar T2 study: one box ROI per disc level, named by level."""
        import re

        import sitkUtils
        from SpineStenosisGraderLib.phantom import make_study

        self.delayDisplay("Making a lumbar MR phantom")
        phantom = make_study(seed=0, modality="MR", region="lumbar")
        inputVolume = sitkUtils.PushVolumeToSlicer(phantom.image, name="LumbarPhantom")
        self.assertIsNotNone(inputVolume.GetImageData())

        logic = SpineStenosisGraderLogic()
        # pip_ensure installs nothing in testing mode, but the PyTorch extension installs torch
        # without asking there; grading cannot be tested without it.
        logic.ensureDependencies()

        self.delayDisplay("Grading")
        rois = logic.process(inputVolume, modality="MR", region="lumbar")

        levels = logic.lastResult.levels
        self.assertGreater(len(levels), 0)
        self.assertEqual(len(rois), len(levels))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"), len(levels))
        names = [roi.GetName() for roi in rois]
        self.assertEqual(names, [level.name for level in levels])
        for name in names:
            self.assertRegex(name, re.compile(r"^(L[1-5]-(L[1-5]|S1)|T12-L1)$"))
        self.assertIn("L4-L5", names)
        self.assertEqual(sorted(names), sorted(level.name for level in phantom.levels))

        for roi in rois:
            self.assertEqual(roi.GetROIType(), slicer.vtkMRMLMarkupsROINode.ROITypeBox)
            self.assertTrue(all(size > 0 for size in roi.GetSize()))
        table = rois[0].GetNodeReference(logic.tableReferenceRole())
        self.assertIsNotNone(table)
        self.assertEqual(table.GetNumberOfRows(), len(levels))

        self.delayDisplay("Test passed")
