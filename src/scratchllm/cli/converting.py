"""Verbs that convert weights: `import-hf` (GPT-2 / Hugging Face weights in), `export-hf`
(a Hugging Face directory out) and `merge-lora` (adapters folded into the base weights)."""

from __future__ import annotations


from scratchllm.cli.base import parser_for, verb


# checkpoints: Hugging Face weights in and out (checkpoint/convert.py)


@verb('import-hf')
def add_import_hf(sub):
    p = parser_for(sub, "import-hf", "Convert a Hugging Face checkpoint (a hub name, downloaded once, or a Hugging Face directory) "
                "to a scratchllm model directory.", aliases=["import-gpt2"])
    p.add_argument("--source", required=True, help="a hub name (gpt2, gpt2-medium, ...) or a Hugging Face model directory")
    p.add_argument("--out", required=True, help="scratchllm model directory to write")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights (default: as stored)")

    def run(args):
        from scratchllm.checkpoint.convert import import_hf

        print(import_hf(args.source, args.out, dtype=args.dtype))

    p.set_defaults(func=run)


@verb('export-hf')
def add_export_hf(sub):
    p = parser_for(sub, "export-hf", "Write a scratchllm model as a Hugging Face directory of its family (GPT-2, Llama, Qwen2, Qwen3) that transformers loads.")
    p.add_argument("--model", required=True, help="scratchllm model directory, run directory, Hugging Face GPT-2 directory or GPT-2 name")
    p.add_argument("--out", required=True, help="Hugging Face directory to write")

    def run(args):
        from scratchllm.checkpoint.convert import export_hf

        print(export_hf(args.model, args.out))

    p.set_defaults(func=run)




@verb('merge-lora')
def add_merge_lora(sub):
    p = parser_for(sub, "merge-lora", "Fold LoRA adapters into the base weights: a plain model directory.")
    p.add_argument("--model", default=None, help="a directory holding base weights + adapters (a LoRA run's checkpoint, "
                   "or a model directory with adapter.safetensors beside its weights)")
    p.add_argument("--base", default=None, help="base model (directory or GPT-2 name) for --adapter; if omitted, the adapter's recorded base_model")
    p.add_argument("--adapter", default=None, help="adapter directory (adapter.safetensors + adapter_config.json), e.g. RUNDIR/adapter")
    p.add_argument("--out", required=True, help="model directory to write")

    def run(args):
        from scratchllm.checkpoint.convert import merge_lora_dir

        print(merge_lora_dir(args.out, model=args.model, base=args.base, adapter=args.adapter))

    p.set_defaults(func=run)
