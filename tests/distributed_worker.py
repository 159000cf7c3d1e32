"""One process of a multi-process ``rosa train`` that also records what *this* process ended with
(its adapter tensors and DLS selections) in ``$ROSA_TEST_RECORD/rank<i>.*``: only process 0 writes
the run directory, so this is how a test sees that the processes agree."""

import json
import os
import sys
from pathlib import Path

from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from rosa.dls.callback import DLSCallback
from rosa.train import recipe


class RecordingTrainer(recipe.RoSATrainer):
    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        record, rank = Path(os.environ["ROSA_TEST_RECORD"]), self.args.process_index
        model = self.accelerator.unwrap_model(self.model)
        tensors = get_peft_model_state_dict(model)  # keyed as the saved adapter_model.safetensors is
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, record / f"rank{rank}.safetensors")
        dls = next(c for c in self.callback_handler.callbacks if isinstance(c, DLSCallback))
        (record / f"rank{rank}.json").write_text(json.dumps({"world_size": self.args.world_size, "history": dls.selector.history}))
        return result


recipe.RoSATrainer = RecordingTrainer
from rosa.cli import main  # noqa: E402  (after the patch, as a user's launcher script would be)

sys.exit(main(sys.argv[1:]))
