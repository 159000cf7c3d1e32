"""The README's Python snippets run as written (with the Hub model id replaced by a local model)."""

from __future__ import annotations

import re

from conftest import REPO, STORIES, require


def test_the_readme_python_snippets_run(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(snippets) == 2 and '"Qwen/Qwen2.5-0.5B"' in snippets[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet.replace('"Qwen/Qwen2.5-0.5B"', repr(str(require(STORIES)))), "README.md", "exec"), namespace)
    reloaded, trainer = namespace["model"], namespace["trainer"]
    assert (tmp_path / "out" / "rosa-adapter" / "adapter_model.safetensors").is_file()
    assert sorted(reloaded.roae_adapters()) == [0, 1, 2, 3, 4]
    assert any(p.abs().sum() > 0 for name, p in reloaded.named_parameters() if name.endswith("_B"))  # it trained
    assert trainer.state.global_step == 4 and (tmp_path / "out" / "sft" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert sum("dls/exploit" in entry for entry in trainer.state.log_history) == 2  # selections after steps 2 and 4
