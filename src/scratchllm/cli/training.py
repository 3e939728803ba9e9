"""Verbs that train: `pretrain`, `demo` and `finetune RECIPE` (classify, instruct, dpo)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from scratchllm.cli.base import add_config, add_group, parser_for, verb


# pretraining (recipes/pretrain.py) and the demo (recipes/demo.py)

@verb('pretrain')
def add_pretrain(sub):
    p = parser_for(sub, "pretrain", "Pretrain a GPT on a text file or prepared DATADIR (single process, or DDP/FSDP under torchrun).")
    from scratchllm.recipes.config import PretrainConfig

    flags = add_config(p, PretrainConfig, given_only=True)

    def run(args):
        from scratchllm.recipes.pretrain import pretrain

        summary = pretrain(**flags.values(args))  # what was given; the run file and a resumed run fill in the rest
        if summary["rank"] == 0:  # under torchrun, one summary
            print(json.dumps(summary))
        return summary["exit_code"]  # 0, or 130 / 143 after SIGINT / SIGTERM (a checkpoint was saved)

    p.set_defaults(func=run)


@verb('demo')
def add_demo(sub):
    p = parser_for(sub, "demo", "The whole pipeline in minutes, no download: tokenizer, data, pretraining, samples, a model to generate from.")
    from scratchllm.recipes.config import DemoConfig

    flags = add_config(p, DemoConfig)

    def run(args):
        from scratchllm.recipes.demo import demo

        summary = demo(flags.config(args))
        print(json.dumps(summary))
        return summary["exit_code"]  # 0, or 130 / 143 after SIGINT / SIGTERM (a checkpoint was saved)

    p.set_defaults(func=run)




# finetune: one sub-verb per recipe. A recipe defined in this module registers its
# `add_finetune_<name>(recipes)` with @finetune_recipe (the way verbs use @verb) and appears as
# `scratchllm finetune <name>`; errors print as "scratchllm finetune: error: ...".

FINETUNE_RECIPES: list[Callable[[argparse._SubParsersAction], None]] = []


def finetune_recipe(add: Callable[[argparse._SubParsersAction], None]):
    """Register an `add_*(recipes)` function that adds one `scratchllm finetune <recipe>` sub-verb."""
    FINETUNE_RECIPES.append(add)
    return add


@verb('finetune')
def add_finetune(sub):
    add_group(sub, "finetune", "Fine-tune a pretrained model: classify (a head on a text's last token), instruct "
               "(full or LoRA), dpo.", "recipe", FINETUNE_RECIPES)


@finetune_recipe
def add_finetune_classify(recipes):
    p = parser_for(recipes, "classify", "Turn a pretrained GPT into a text classifier (a head on the last real token's hidden state).")
    from scratchllm.recipes.config import ClassifyConfig

    flags = add_config(p, ClassifyConfig)

    def run(args):
        from scratchllm.evaluation.metrics import format_classification
        from scratchllm.recipes.classify import finetune_classifier, format_history

        report = finetune_classifier(flags.config(args, progress=sys.stderr.isatty()))
        print(format_history(report["epochs"]))
        print()
        print(format_classification(report["test"], "test"))
        best = report["best"]
        last = report["epochs"][-1]["epoch"] if report["epochs"] else None
        if report["final_epoch"] is not None and (report["stopped"] == "patience" or report["final_epoch"] != last):
            early = f"stopped early after epoch {last:g}; " if report["stopped"] == "patience" else ""
            print(f"({early}final/ holds epoch {report['final_epoch']:g}, the lowest validation loss)")
        elif best is not None and best["epoch"] is not None and best["epoch"] != report["final_epoch"]:
            print(f"(best/ is epoch {best['epoch']:g}: validation loss {best['val_loss']:.4f}, accuracy "
                  f"{100 * best['val_accuracy']:.2f}%, test accuracy {100 * best['test_accuracy']:.2f}%)")

    p.set_defaults(func=run)




def _add_tuning(recipes, name: str, help: str, config: str, module: str, function: str) -> None:
    """`finetune instruct` and `finetune dpo`: a config dataclass in, fit's summary (JSON) out."""
    import importlib

    import scratchllm.recipes.config as configs

    cls = getattr(configs, config)
    p = parser_for(recipes, name, help)
    flags = add_config(p, cls)

    def run(args):
        summary = getattr(importlib.import_module(module), function)(flags.config(args))
        print(json.dumps(summary))
        return summary["exit_code"]

    p.set_defaults(func=run)


@finetune_recipe
def add_finetune_instruct(recipes):
    _add_tuning(recipes, "instruct", "Instruction fine-tuning on {instruction, input, output} or {messages} records "
                "(full or LoRA).", "InstructConfig", "scratchllm.recipes.instruct", "finetune_instruct")


@finetune_recipe
def add_finetune_dpo(recipes):
    _add_tuning(recipes, "dpo", "Direct Preference Optimization on {instruction, input, chosen, rejected} records.",
                "DPOConfig", "scratchllm.recipes.dpo", "finetune_dpo")
