"""The model stage: what a checkpoint is.

- `transformer`: the DMaS-LLaMa-Lite architecture in one file (`ModelConfig`, presets, `Transformer`).
- `tokenizer`: GPT-2 BPE built offline from the bundled vocabulary files.
- `weights`: our model files (model.safetensors + model_config.json) and loading any model directory.
- `hf`: conversion to and from transformers' `LlamaForCausalLM` directories (the released format).
- `hub`: downloads from the Hugging Face Hub.
- `lora`: LoRA adapters through peft, merged from a state dict, saved and read in peft's format for the HF model.
- `chat_format`: the Vicuna 1.1 prompt the instruct model was tuned with.
"""
