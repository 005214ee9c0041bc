"""The import graph of the repository's own modules, read from the source (ast, every import, also those inside
functions): imports flow one way, from the entry scripts down to the layers, with no cycle, and no entry script
imports another."""
import ast
import os

from test_train import ROOT

# Lowest first. A module may import modules of its own tier or of a lower one, never of a higher one.
TIERS = [
    ("base", {"layers", "common"}),
    ("models", {"tokenizer", "projector", "flow", "text_decoder", "probes"}),
    ("data", {"data", "real_data", "judge", "coco_caption"}),
    ("pipeline", {"pipeline"}),
    ("tasks", {"tasks", "text_tasks", "guards"}),
    ("measurements", {"benchmarks.measure"}),
    ("entry", {"train", "sample", "evaluate", "bench", "export"}),
]
TIER = {m: i for i, (_, mods) in enumerate(TIERS) for m in mods}
ENTRY = TIERS[-1][1]
EXTRA = {"benchmarks.baselines": os.path.join("benchmarks", "baselines.py"),
         "benchmarks.measure": os.path.join("benchmarks", "measure.py"),
         "nbsetup": os.path.join("notebooks", "nbsetup.py"), "draw_pipeline": os.path.join("docs", "draw_pipeline.py")}


def own_modules():
    """name -> path of every module of the repository outside tests/."""
    mods = {f[:-3]: f for f in os.listdir(ROOT) if f.endswith(".py")}
    mods.update({name: path for name, path in EXTRA.items() if os.path.exists(os.path.join(ROOT, path))})
    return mods


def imports_of(path, names):
    """The repository modules that the file at path imports, anywhere in it."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in names}


def graph():
    mods = own_modules()
    return {m: imports_of(path, mods) - {m} for m, path in mods.items()}


def test_every_module_has_a_tier():
    g = graph()
    untiered = [m for m in g if m not in TIER and m not in EXTRA]
    assert not untiered, f"add these to TIERS: {untiered}"


def test_imports_flow_one_way_and_entry_scripts_import_no_other():
    upward = [f"{m} ({TIERS[TIER[m]][0]}) imports {d} ({TIERS[TIER[d]][0]})" for m, deps in graph().items()
              for d in deps if m in TIER and d in TIER and TIER[d] > TIER[m]]
    assert not upward, upward
    entry = [f"{m} imports {d}" for m, deps in graph().items() for d in deps if d in ENTRY]
    assert not entry, entry  # the extras (notebooks, the baselines) are not entry scripts, and import none either


def cycles(g):
    """Every cycle a depth-first walk of the graph g (name -> set of names) meets, as a list of names."""
    state, found = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_there_is_no_import_cycle():
    assert not cycles(graph()), cycles(graph())


def test_the_checker_sees_imports_in_functions_and_cycles(tmp_path):
    (tmp_path / "a.py").write_text("import os\n\ndef f():\n    import b\n    from c import x\n")
    assert imports_of(str(tmp_path / "a.py"), {"b", "c", "d"}) == {"b", "c"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
