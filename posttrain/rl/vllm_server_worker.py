"""The piece of posttrain that runs inside a user's vLLM server (``generation.vllm.mode: server``).

A vLLM worker extension: ``vllm serve MODEL --worker-extension-cls
posttrain.rl.vllm_server_worker.WeightFileLoader`` adds `WeightFileLoader.load_posttrain_weights` to the
server's workers, which the trainer calls through the server's ``/collective_rpc`` endpoint (vLLM's dev
mode, ``VLLM_SERVER_DEV_MODE=1``) after every optimizer step (`posttrain.rl.vllm_server.VLLMServerSampler`).

Mechanism, stated plainly: the trainer writes the policy's full weights (adapters merged) as one
safetensors file into a folder both sides can read — by default ``/dev/shm``, a memory-backed tmpfs on the
same host, so nothing touches a disk — and the workers load that file in place with vLLM's own
``reload_weights`` (the same per-layer reload and weight processing as the colocated engine's sync). A
server on another host needs a folder both hosts mount (``generation.vllm.weights_dir``). vLLM 0.32's own
weight-transfer API (``/init_weight_transfer_engine``, ``/update_weights``: NCCL broadcast or CUDA IPC)
needs GPUs on both sides; this file route is what works on a CPU and is what is tested here.

This module imports vLLM and is imported only by the server's worker processes; nothing else in posttrain
imports it (the trainer's environment need not have vLLM).
"""

from __future__ import annotations

from typing import Any


def repack_embedding_matmuls(engine_model: Any) -> None:
    """Redoes the weight processing of the embedding and LM-head layers after a reload.

    vLLM 0.32 on CPU packs each matrix for its matmul kernel once loaded; its in-place reload repacks the
    linear layers but leaves the LM head's packed copy (read from the tied embedding) at the old weights:
    greedy tokens and log-probs then differ from the synced model's (measured on the micro model; with
    this they match to 1e-6). On a GPU the embedding's processing does nothing.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in engine_model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)


class WeightFileLoader:
    """vLLM worker extension (mixed into the server's worker class, so ``self`` is a vLLM worker)."""

    def load_posttrain_weights(self, path: str) -> int:
        """Loads the safetensors file at ``path`` (Hugging Face parameter names) into the worker's model in
        place; returns how many tensors it held."""
        from safetensors.torch import load_file

        weights = load_file(path)  # memory-mapped from the tmpfs file, then copied into the engine's layers
        self.model_runner.reload_weights(weights_iterator=list(weights.items()), is_checkpoint_format=True)  # type: ignore[attr-defined]
        repack_embedding_matmuls(self.model_runner.get_model())  # type: ignore[attr-defined]
        return len(weights)
