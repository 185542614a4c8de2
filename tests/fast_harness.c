/* Test harness: run ebnn_fast.c outside Python (e.g. the NEON build under qemu-aarch64).
 *
 *   fast_harness MODEL.bin IMAGES.bin SCORES.bin THREADS
 *
 * MODEL.bin (written by tests/test_fast.py, little-endian): int32 nlayers, classes, in_c,
 * offset[in_c]; per layer the int32 fields of ebnn_layer in order, then for each of its
 * nine array pointers an int64 byte count (0: NULL) and the bytes. IMAGES.bin: int64 n,
 * then n uint8 HWC images. SCORES.bin receives n * classes int64 scores.
 */
#include <stdio.h>

#include "ebnn_fast.c"

#define FIELDS 21
#define ARRAYS 9

static void *read_array(FILE *f, int *ok)
{
    int64_t bytes = 0;
    void *p;
    if (fread(&bytes, sizeof bytes, 1, f) != 1) *ok = 0;
    if (bytes <= 0) return NULL;
    p = malloc((size_t)bytes);
    if (!p || fread(p, 1, (size_t)bytes, f) != (size_t)bytes) *ok = 0;
    return p;
}

int main(int argc, char **argv)
{
    FILE *f;
    ebnn_model m;
    ebnn_layer *layers;
    int32_t head[3], *offset;
    int64_t n, image = 1;
    uint8_t *x;
    int64_t *scores;
    int i, ok = 1;
    if (argc != 5) return 2;
    f = fopen(argv[1], "rb");
    if (!f || fread(head, sizeof(int32_t), 3, f) != 3) return 3;
    offset = malloc(sizeof(int32_t) * (size_t)head[2]);
    layers = calloc((size_t)head[0], sizeof *layers);
    if (!offset || !layers || fread(offset, sizeof(int32_t), (size_t)head[2], f) != (size_t)head[2])
        return 3;
    for (i = 0; i < head[0]; i++) {
        ebnn_layer *l = &layers[i];
        void *a[ARRAYS];
        int k;
        /* the int32 fields come first in ebnn_layer, without padding between them */
        if (fread(&l->first, sizeof(int32_t), FIELDS, f) != FIELDS) return 3;
        for (k = 0; k < ARRAYS; k++) a[k] = read_array(f, &ok);
        l->wbits = a[0];
        l->wmask = a[1];
        l->limit = a[2];
        l->rowclass = a[3];
        l->colclass = a[4];
        l->thresh = a[5];
        l->flip = a[6];
        l->scale = a[7];
        l->bias = a[8];
    }
    fclose(f);
    if (!ok) return 3;
    m.nlayers = head[0];
    m.classes = head[1];
    m.offset = offset;
    m.layers = layers;
    image = (int64_t)layers[0].in_h * layers[0].in_w * layers[0].in_c;
    f = fopen(argv[2], "rb");
    if (!f || fread(&n, sizeof n, 1, f) != 1) return 4;
    x = malloc((size_t)(n * image + 1));
    scores = malloc(sizeof(int64_t) * (size_t)(n * m.classes + 1));
    if (!x || !scores || fread(x, 1, (size_t)(n * image), f) != (size_t)(n * image)) return 4;
    fclose(f);
    if (ebnn_fast_scores(&m, x, n, scores, atoi(argv[4]))) return 5;
    f = fopen(argv[3], "wb");
    if (!f || fwrite(scores, sizeof(int64_t), (size_t)(n * m.classes), f) !=
                  (size_t)(n * m.classes))
        return 6;
    fclose(f);
    return 0;
}
