"""Static checks of the Slicer module file and its .ui, which need the Slicer application to run.

What can be checked without Slicer is checked here: the file parses, imports at load time only
what Slicer bundles, passes user-facing strings through ``_()``, binds only parameters that
exist, uses only widgets the .ui has, and registers the sample study with the right SHA256.
The Logic itself runs in Testing/test_module_logic.py.
"""

from __future__ import annotations

import ast
import hashlib
import py_compile
import re
import sys
import xml.etree.ElementTree as ET

from conftest import DATA, ROOT

MODULE_DIR = ROOT / "SpineStenosisGrader"
MODULE_FILE = MODULE_DIR / "SpineStenosisGrader.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SpineStenosisGrader.ui"

#: what Slicer bundles and the module file may import when it is loaded (besides the standard library)
BUNDLED_WITH_SLICER = {"slicer", "vtk", "qt", "ctk", "numpy", "SimpleITK", "sitkUtils"}

#: Qt properties that users read
USER_FACING_PROPERTIES = {"text", "toolTip", "windowTitle", "placeholderText", "format", "statusTip"}
#: calls whose string arguments users read (Qt widgets and dialogs, Slicer's message boxes, raised errors)
USER_FACING_CALLS = {
    "QTableWidgetItem", "QLabel", "QPushButton", "QCheckBox", "setText", "setToolTip", "setWindowTitle", "addItem",
    "getOpenFileName", "getExistingDirectory", "getSaveFileName", "getItem", "getText",
    "tryWithErrorDisplay", "errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay",
    "confirmYesNoDisplay", "ValueError", "RuntimeError", "TimeoutError",
}


def _tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _class(name: str) -> ast.ClassDef:
    return next(node for node in _tree().body if isinstance(node, ast.ClassDef) and node.name == name)


def _load_time_imports(tree: ast.AST) -> list[str]:
    """Modules imported when the file is loaded: everywhere except inside function bodies."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append("." * child.level + (child.module or ""))
            visit(child)

    visit(tree)
    return found


def test_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "module.pyc"), doraise=True)


def test_module_file_imports_only_what_slicer_bundles_at_load_time():
    imports = _load_time_imports(_tree())
    assert "slicer" in imports
    outside = [name for name in imports
               if name.split(".")[0] not in BUNDLED_WITH_SLICER and name.split(".")[0] not in sys.stdlib_module_names]
    assert outside == [], f"imported when the module loads but not bundled with Slicer: {outside}"


def test_the_library_and_inference_packages_are_imported_only_inside_methods():
    inside = set()
    for node in ast.walk(_tree()):
        if isinstance(node, ast.ImportFrom) and node.module:
            inside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            inside.update(alias.name.split(".")[0] for alias in node.names)
    assert "SpineStenosisGraderLib" in inside
    assert not {"SpineStenosisGraderLib", "onnxruntime", "torch"} & set(_load_time_imports(_tree()))


def test_module_file_has_the_four_template_classes():
    classes = {node.name: [ast.unparse(base) for base in node.bases]
               for node in _tree().body if isinstance(node, ast.ClassDef)}
    assert classes["SpineStenosisGrader"] == ["ScriptedLoadableModule"]
    assert classes["SpineStenosisGraderWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["SpineStenosisGraderLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["SpineStenosisGraderTest"] == ["ScriptedLoadableModuleTest"]


def _has_words(text: str) -> bool:
    """True for text a user reads: letters outside the {placeholders}."""
    return bool(re.search(r"[A-Za-z]{2,}", re.sub(r"\{[^}]*\}", "", text)))


def _untranslated(node: ast.AST) -> bool:
    """A literal (or f-string) with words, not passed through _()."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _has_words(node.value)
    if isinstance(node, ast.JoinedStr):
        return True  # an f-string cannot be translated at all
    if isinstance(node, ast.BinOp):
        return _untranslated(node.left) or _untranslated(node.right)
    if isinstance(node, ast.IfExp):
        return _untranslated(node.body) or _untranslated(node.orelse)
    return False


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _untranslated_strings() -> list[str]:
    problems = []
    for node in ast.walk(_tree()):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in USER_FACING_PROPERTIES \
                        and _untranslated(node.value):
                    problems.append(f"line {node.lineno}: .{target.attr} = {ast.unparse(node.value)[:60]}")
        elif isinstance(node, ast.Call) and _call_name(node) in USER_FACING_CALLS:
            for arg in [*node.args, *(keyword.value for keyword in node.keywords)]:
                if _untranslated(arg):
                    problems.append(f"line {node.lineno}: {_call_name(node)}({ast.unparse(arg)[:60]})")
    return problems


def test_user_facing_strings_go_through_the_translation_function():
    assert _untranslated_strings() == []


def test_the_translation_check_catches_bare_strings_and_f_strings():
    samples = {
        'self.ui.statusLabel.text = "Done"': True,
        'self.ui.statusLabel.text = _("Done")': False,
        'self.ui.statusLabel.text = _("{n} levels").format(n=n)': False,
        'self.ui.statusLabel.text = f"{n} levels"': True,
        'qt.QTableWidgetItem("{grade} ({p:.2f})".format(grade=g, p=p))': False,
        'qt.QTableWidgetItem("not graded")': True,
        'raise ValueError("Select a volume.")': True,
        'combo.addItem("", "")': False,
        'self.ui.statusLabel.text = message + "\\n" + _("Cancelled")': False,
    }
    for source, flagged in samples.items():
        tree = ast.parse(source)
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                found += [t for t in node.targets if isinstance(t, ast.Attribute)
                          and t.attr in USER_FACING_PROPERTIES and _untranslated(node.value)]
            elif isinstance(node, ast.Call) and _call_name(node) in USER_FACING_CALLS:
                found += [a for a in node.args if _untranslated(a)]
        assert bool(found) == flagged, source


def _parameter_fields() -> dict[str, str]:
    return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in _class("SpineStenosisGraderParameterNode").body
            if isinstance(stmt, ast.AnnAssign)}


def _bound_widgets() -> dict[str, str]:
    bound = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    return bound


def test_every_widget_bound_in_the_ui_names_a_parameter_of_the_right_type():
    """connectGui fails on a SlicerParameterName that is not a field, or on a widget that cannot show its type."""
    fields = _parameter_fields()
    bound = _bound_widgets()
    assert set(bound) <= set(fields), f"not parameters: {set(bound) - set(fields)}"
    enums = {"enum.Enum"}
    for node in _tree().body:  # in file order, so a subclass follows its base
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base) in enums for base in node.bases):
            enums.add(node.name)
    for name, widget_class in bound.items():
        annotation = fields[name]
        if annotation.startswith("vtkMRML"):
            assert widget_class == "qMRMLNodeComboBox", name
        elif annotation in enums:
            assert widget_class == "QComboBox", name
        elif annotation == "bool":
            assert widget_class == "QCheckBox", name
    # every parameter the user sets directly is bound; the package path follows the package combo
    assert set(fields) - set(bound) == {"modelPackagePath"}


def test_exported_training_data_leaves_out_patient_identifiers_unless_asked():
    defaults = {stmt.target.id: ast.unparse(stmt.value) for stmt in _class("SpineStenosisGraderParameterNode").body
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None}
    assert defaults["includePatientInfo"] == "False"
    checkbox = next(w for w in ET.parse(UI_FILE).getroot().iter("widget")
                    if w.get("name") == "includePatientInfoCheckBox")
    checked = [p for p in checkbox.findall("property") if p.get("name") == "checked"]
    assert checked and checked[0].find("bool").text == "false"


def _ui_widget_names() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_widgets_used_by_the_module_exist_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the Widget should use the .ui"
    missing = used - set(_ui_widget_names())
    assert not missing, f"self.ui.<name> not in {UI_FILE.name}: {missing}"


def test_results_table_has_the_four_columns_the_widget_fills():
    table = next(w for w in ET.parse(UI_FILE).getroot().iter("widget") if w.get("name") == "resultsTableWidget")
    assert table.get("class") == "QTableWidget"
    headers = [column.find("property/string").text for column in table.findall("column")]
    assert headers == ["Level", "AI grade", "Clinician", "Edited"]


def _module_constant(name: str) -> str:
    assignment = next(node for node in _tree().body if isinstance(node, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == name for t in node.targets))
    return ast.literal_eval(assignment.value)


def test_the_sample_study_is_registered_with_the_sha256_of_the_bundled_file():
    digest = _module_constant("SAMPLE_SHA256")
    bundled = MODULE_DIR / "Resources" / "SampleData" / "example_ct.nii.gz"
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == digest
    assert hashlib.sha256((DATA / "totalsegmentator_ct" / "example_ct.nii.gz").read_bytes()).hexdigest() == digest
    assert (MODULE_DIR / "Resources" / "Icons" / f"{_module_constant('SAMPLE_NAME')}.png").is_file()
    source = MODULE_FILE.read_text(encoding="utf-8")
    # registered once the application has started, as Slicer's template does
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in source


def test_cmake_lists_every_library_script_and_resource():
    """slicerMacroBuildScriptedModule packages only the files it is given; a glob is not the convention."""
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "SpineStenosisGrader")
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "SpineStenosisGraderLib").rglob("*.py")}
    missing = {p for p in on_disk if p not in cmake}
    assert not missing, f"add to SCRIPTS in SpineStenosisGrader/CMakeLists.txt: {sorted(missing)}"
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    unlisted = {r for r in resources if r not in cmake}
    assert not unlisted, f"add to RESOURCES in SpineStenosisGrader/CMakeLists.txt: {sorted(unlisted)}"
