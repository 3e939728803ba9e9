"""Verbs that convert weights: `import-hf` (GPT-2 / Hugging Face weights in), `export-hf`
(a Hugging Face directory out), `export-gguf` (a GGUF file for llama.cpp out) and `merge-lora`
(adapters folded into the base weights). Their flags come from checkpoint/config.py."""

from __future__ import annotations

from scratchllm.cli.base import add_config, parser_for, verb


# checkpoints: Hugging Face weights in and out (checkpoint/convert.py)


@verb('import-hf')
def add_import_hf(sub):
    p = parser_for(sub, "import-hf", "Convert a Hugging Face checkpoint (a hub name, downloaded once, or a Hugging Face directory) "
                "to a scratchllm model directory.", aliases=["import-gpt2"])
    from scratchllm.checkpoint.config import ImportHFConfig

    flags = add_config(p, ImportHFConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.convert import import_hf

        cfg = flags.config(args)
        print(import_hf(cfg.source, cfg.out, dtype=cfg.dtype))

    p.set_defaults(func=run)


@verb('export-hf')
def add_export_hf(sub):
    p = parser_for(sub, "export-hf", "Write a scratchllm model as a Hugging Face directory of its family (GPT-2, Llama, Qwen2, Qwen3) that transformers loads.")
    from scratchllm.checkpoint.config import ExportHFConfig

    flags = add_config(p, ExportHFConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.convert import export_hf

        cfg = flags.config(args)
        print(export_hf(cfg.model, cfg.out))

    p.set_defaults(func=run)


@verb('export-gguf')
def add_export_gguf(sub):
    p = parser_for(sub, "export-gguf", "Write a scratchllm decoder as a GGUF file (its tokenizer and chat template inside) "
                   "that llama.cpp, Ollama and LM Studio run.")
    from scratchllm.checkpoint.config import ExportGGUFConfig

    flags = add_config(p, ExportGGUFConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.gguf_file import export_gguf

        cfg = flags.config(args)
        print(export_gguf(cfg.model, cfg.out, type=cfg.type, overwrite=cfg.overwrite))

    p.set_defaults(func=run)


@verb('merge-lora')
def add_merge_lora(sub):
    p = parser_for(sub, "merge-lora", "Fold LoRA adapters into the base weights: a plain model directory.")
    from scratchllm.checkpoint.config import MergeLoraConfig

    flags = add_config(p, MergeLoraConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.convert import merge_lora_dir

        cfg = flags.config(args)
        print(merge_lora_dir(cfg.out, model=cfg.model, base=cfg.base, adapter=cfg.adapter))

    p.set_defaults(func=run)
