//! Shared helpers of the K-quant reference quantizers (ggml's make_qx_quants, make_qkx2_quants, …).
