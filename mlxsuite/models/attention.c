/* Causal softmax attention on the CPU, fused (mlxsuite/models/native_attention.py compiles and calls it).

   Per (KV head, block of query rows): the rows of the query heads that share the KV head packed into one matrix,
   one GEMM for their scores against the keys the block sees, one pass per row over them while they are in cache
   (mask, max, exp, sum), one GEMM for the weighted values, unpacked into the output divided by the sums. Work
   items are shared by `threads` threads (each GEMM single-threaded: the caller sets the BLAS to one thread
   meanwhile). Queries are already scaled; the key at index c has position key_pos + c, the query row r position
   query_pos + r; a row sees keys at positions <= its own, and with a window w > 0 only the last w of them.
   Strides are in floats; the last axis of every array is contiguous. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef struct {
  int heads, kv_heads, n, keys, dim, rows;
  const float *q, *k, *v;
  long q_head, q_row, k_head, k_row, v_head, v_row;
  float *out;
  long o_head, o_row;
  long query_pos, key_pos, window;
  int items;
  int next; /* the next work item, taken atomically */
  size_t scratch;
} Job;

static inline float exp_nonpositive(float x) {
  /* exp(x) for x <= 0: 2^n 2^f, n = round(x log2 e), degree-6 polynomial for 2^f (rel. error ~2.5e-7) */
  x = x < -87.0f ? -87.0f : x;
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.0f) - 12582912.0f;
  float g = n - t; /* -f */
  float p = 1.0f + g * (-0.69314718055994531f + g * (0.24022650695910071f + g * (-0.055504108664821580f +
            g * (0.0096181291076284772f + g * (-0.0013333558146428443f + g * 0.00015403530393381609f)))));
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return p * scale;
}

/* One row of scores over keys [0, width): exp(s - max) over the keys [lo, hi) it sees, 0 elsewhere; returns
   1 / their sum (the caller scales the row's output: dim multiplies instead of width). */
static float softmax_row(float *s, int lo, int hi, int width) {
  if (hi < lo) hi = lo; /* never with the caller's positions; keeps the zeroing below in bounds */
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int c = lo; c < hi; c++) m = s[c] > m ? s[c] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int c = lo; c < hi; c++) {
    float e = exp_nonpositive(s[c] - m);
    s[c] = e;
    sum += e;
  }
  for (int c = 0; c < lo; c++) s[c] = 0.0f;
  for (int c = hi; c < width; c++) s[c] = 0.0f;
  return sum > 0.0f ? 1.0f / sum : 0.0f; /* 0: a row that sees no key (none here) */
}

static void run_item(const Job *j, int item, float *scores) {
  int blocks = (j->n + j->rows - 1) / j->rows, rep = j->heads / j->kv_heads, dim = j->dim;
  int g = item / blocks, r0 = (item % blocks) * j->rows;
  int rows = j->n - r0 < j->rows ? j->n - r0 : j->rows, m = rep * rows;
  long last = j->query_pos + r0 + rows - 1 - j->key_pos; /* the last key the block's last row sees */
  int end = last + 1 < j->keys ? (int)(last + 1) : j->keys, start = 0;
  if (j->window > 0) {
    long first = j->query_pos + r0 - j->window + 1 - j->key_pos;
    start = first > 0 ? (int)first : 0;
  }
  int width = end - start;
  float *packed = scores + (size_t)rep * j->rows * j->keys; /* (rep * rows, dim): queries, then outputs */
  float *inv_sum = packed + (size_t)rep * j->rows * dim;      /* per packed row */
  for (int a = 0; a < rep; a++)
    for (int i = 0; i < rows; i++)
      memcpy(packed + ((long)a * rows + i) * dim, j->q + (g * rep + a) * j->q_head + (r0 + i) * j->q_row, dim * 4);
  const float *k = j->k + g * j->k_head + start * j->k_row, *v = j->v + g * j->v_head + start * j->v_row;
  cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, width, dim, 1.0f, packed, dim, k, j->k_row, 0.0f, scores, width);
  for (int row = 0; row < m; row++) {
    long pos = j->query_pos + r0 + row % rows - j->key_pos; /* the row sees keys start + c for c in [lo, hi) */
    int hi = pos + 1 - start < width ? (int)(pos + 1 - start) : width;
    int lo = j->window > 0 && pos - j->window + 1 - start > 0 ? (int)(pos - j->window + 1 - start) : 0;
    inv_sum[row] = softmax_row(scores + (long)row * width, lo, hi, width);
  }
  cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, dim, width, 1.0f, scores, width, v, j->v_row, 0.0f, packed, dim);
  for (int a = 0; a < rep; a++)
    for (int i = 0; i < rows; i++) {
      float *o = j->out + (g * rep + a) * j->o_head + (r0 + i) * j->o_row, inv = inv_sum[a * rows + i];
      const float *p = packed + ((long)a * rows + i) * dim;
#pragma omp simd
      for (int d = 0; d < dim; d++) o[d] = p[d] * inv;
    }
}

static void *worker(void *arg) {
  Job *j = (Job *)arg;
  float *scores = (float *)malloc(j->scratch * sizeof(float));
  if (!scores) return (void *)1;
  for (int item; (item = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->items;) run_item(j, item, scores);
  free(scores);
  return NULL;
}

int mlxsuite_attention(int heads, int kv_heads, int n, int keys, int dim, const float *q, long q_head, long q_row,
                       const float *k, long k_head, long k_row, const float *v, long v_head, long v_row, float *out,
                       long o_head, long o_row, long query_pos, long key_pos, long window, int rows, int threads) {
  Job j = {heads, kv_heads, n, keys, dim, rows, q, k, v, q_head, q_row, k_head, k_row, v_head, v_row, out,
           o_head, o_row, query_pos, key_pos, window, 0, 0, 0};
  j.items = kv_heads * ((n + rows - 1) / rows);
  j.scratch = (size_t)(heads / kv_heads) * rows * (keys + dim + 1);
  if (threads > j.items) threads = j.items;
  pthread_t extra[64];
  int started = 0, failed = 0;
  for (; started < threads - 1 && started < 64; started++)
    if (pthread_create(&extra[started], NULL, worker, &j) != 0) break;
  failed |= worker(&j) != NULL;
  for (int t = 0; t < started; t++) {
    void *r;
    pthread_join(extra[t], &r);
    failed |= r != NULL;
  }
  return failed ? -1 : 0;
}
