// ggml's own reference code as the oracle for ledge's block formats.
//
// Compiled by gen_quant_fixtures.sh against ggml-quants.c and ggml-cpu/quants.c from the
// llama.cpp source that PyPI's llama-cpp-python ships (never vendored in this repo). For each
// type: quantize_row_<t>_ref of src.f32, its dequantize_row_<t>, and ggml's generic
// (scalar) vec_dot of weight row r against the activation-quantized row R-1-r.
//
//   ggml_quant_ref DIR [ROWS]   reads DIR/src.f32 (ROWS × 256 floats), writes DIR/<T>.ggml.*
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-quants.h"
#include "ggml-common.h"

// The few ggml.c symbols ggml-quants.c references; none is reached on these paths.
float ggml_table_f32_f16[1 << 16];
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    (void)fmt;
    fprintf(stderr, "ggml abort at %s:%d\n", file, line);
    abort();
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void)t; (void)ne; abort(); }
size_t ggml_type_size(enum ggml_type t) { (void)t; abort(); }
const char *ggml_type_name(enum ggml_type t) { (void)t; return "?"; }

typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*dequant_fn)(const void *, float *, int64_t);
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

#define DOT(name) void ggml_vec_dot_##name##_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int)
DOT(q4_0_q8_0); DOT(q4_1_q8_1); DOT(q5_0_q8_0); DOT(q5_1_q8_1); DOT(q8_0_q8_0);
DOT(q2_K_q8_K); DOT(q3_K_q8_K); DOT(q4_K_q8_K); DOT(q5_K_q8_K); DOT(q6_K_q8_K);
DOT(iq4_nl_q8_0); DOT(iq4_xs_q8_K);

enum act { NONE, Q8_0, Q8_1, Q8_K };

static const struct {
    const char *name;
    int block, size;
    quant_fn quant;
    dequant_fn dequant; // NULL: ggml has none (Q8_1)
    dot_fn dot;
    enum act act;
} TYPES[] = {
    {"Q4_0", 32, sizeof(block_q4_0), (quant_fn)quantize_row_q4_0_ref, (dequant_fn)dequantize_row_q4_0, ggml_vec_dot_q4_0_q8_0_generic, Q8_0},
    {"Q4_1", 32, sizeof(block_q4_1), (quant_fn)quantize_row_q4_1_ref, (dequant_fn)dequantize_row_q4_1, ggml_vec_dot_q4_1_q8_1_generic, Q8_1},
    {"Q5_0", 32, sizeof(block_q5_0), (quant_fn)quantize_row_q5_0_ref, (dequant_fn)dequantize_row_q5_0, ggml_vec_dot_q5_0_q8_0_generic, Q8_0},
    {"Q5_1", 32, sizeof(block_q5_1), (quant_fn)quantize_row_q5_1_ref, (dequant_fn)dequantize_row_q5_1, ggml_vec_dot_q5_1_q8_1_generic, Q8_1},
    {"Q8_0", 32, sizeof(block_q8_0), (quant_fn)quantize_row_q8_0_ref, (dequant_fn)dequantize_row_q8_0, ggml_vec_dot_q8_0_q8_0_generic, Q8_0},
    {"Q8_1", 32, sizeof(block_q8_1), (quant_fn)quantize_row_q8_1_ref, NULL, NULL, NONE},
    {"Q2_K", 256, sizeof(block_q2_K), (quant_fn)quantize_row_q2_K_ref, (dequant_fn)dequantize_row_q2_K, ggml_vec_dot_q2_K_q8_K_generic, Q8_K},
    {"Q3_K", 256, sizeof(block_q3_K), (quant_fn)quantize_row_q3_K_ref, (dequant_fn)dequantize_row_q3_K, ggml_vec_dot_q3_K_q8_K_generic, Q8_K},
    {"Q4_K", 256, sizeof(block_q4_K), (quant_fn)quantize_row_q4_K_ref, (dequant_fn)dequantize_row_q4_K, ggml_vec_dot_q4_K_q8_K_generic, Q8_K},
    {"Q5_K", 256, sizeof(block_q5_K), (quant_fn)quantize_row_q5_K_ref, (dequant_fn)dequantize_row_q5_K, ggml_vec_dot_q5_K_q8_K_generic, Q8_K},
    {"Q6_K", 256, sizeof(block_q6_K), (quant_fn)quantize_row_q6_K_ref, (dequant_fn)dequantize_row_q6_K, ggml_vec_dot_q6_K_q8_K_generic, Q8_K},
    {"Q8_K", 256, sizeof(block_q8_K), (quant_fn)quantize_row_q8_K_ref, (dequant_fn)dequantize_row_q8_K, NULL, NONE},
    {"IQ4_NL", 32, sizeof(block_iq4_nl), (quant_fn)quantize_row_iq4_nl_ref, (dequant_fn)dequantize_row_iq4_nl, ggml_vec_dot_iq4_nl_q8_0_generic, Q8_0},
    {"IQ4_XS", 256, sizeof(block_iq4_xs), (quant_fn)quantize_row_iq4_xs_ref, (dequant_fn)dequantize_row_iq4_xs, ggml_vec_dot_iq4_xs_q8_K_generic, Q8_K},
};

static void write_file(const char *dir, const char *name, const char *ext, const void *p, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s DIR [ROWS]\n", argv[0]); return 2; }
    const char *dir = argv[1];
    const int N = 256, R = argc > 2 ? atoi(argv[2]) : 16;
    for (int i = 0; i < 65536; i++) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t)i);
    float *src = malloc((size_t)R * N * sizeof(float));
    char path[1024];
    snprintf(path, sizeof path, "%s/src.f32", dir);
    FILE *f = fopen(path, "rb");
    if (!f || fread(src, sizeof(float), (size_t)R * N, f) != (size_t)R * N) { perror(path); return 1; }
    fclose(f);

    // Block sizes as the compiler lays out ggml's structs: the type table's oracle.
    snprintf(path, sizeof path, "%s/ggml_type_sizes.json", dir);
    FILE *js = fopen(path, "w");
    fprintf(js, "{");
    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++)
        fprintf(js, "%s\n  \"%s\": [%d, %d]", t ? "," : "", TYPES[t].name, TYPES[t].block, TYPES[t].size);
    fprintf(js, "\n}\n");
    fclose(js);

    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++) {
        size_t row = (size_t)N / TYPES[t].block * TYPES[t].size;
        uint8_t *q = calloc(R, row);
        float *deq = calloc((size_t)R * N, sizeof(float));
        for (int r = 0; r < R; r++) TYPES[t].quant(src + (size_t)r * N, q + r * row, N);
        write_file(dir, TYPES[t].name, "ggml.q", q, R * row);
        if (TYPES[t].dequant) {
            for (int r = 0; r < R; r++) TYPES[t].dequant(q + r * row, deq + (size_t)r * N, N);
            write_file(dir, TYPES[t].name, "ggml.deq.f32", deq, (size_t)R * N * sizeof(float));
        }
        if (TYPES[t].dot) {
            size_t arow = TYPES[t].act == Q8_K ? sizeof(block_q8_K) * (N / 256)
                        : TYPES[t].act == Q8_1 ? sizeof(block_q8_1) * (N / 32)
                                               : sizeof(block_q8_0) * (N / 32);
            uint8_t *a = calloc(R, arow);
            for (int r = 0; r < R; r++) {
                const float *x = src + (size_t)r * N;
                if (TYPES[t].act == Q8_K) quantize_row_q8_K_ref(x, (block_q8_K *)(a + r * arow), N);
                else if (TYPES[t].act == Q8_1) quantize_row_q8_1_ref(x, (block_q8_1 *)(a + r * arow), N);
                else quantize_row_q8_0_ref(x, (block_q8_0 *)(a + r * arow), N);
            }
            float dots[1024];
            for (int r = 0; r < R; r++)
                TYPES[t].dot(N, &dots[r], 0, q + r * row, 0, a + (size_t)(R - 1 - r) * arow, 0, 1);
            write_file(dir, TYPES[t].name, "ggml.dot.f32", dots, (size_t)R * sizeof(float));
            free(a);
        }
        free(q);
        free(deq);
    }
    return 0;
}
