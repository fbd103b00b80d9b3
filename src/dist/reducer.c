/* reducer.c -- the data-parallel gradient reducer (moe.h, "processes"), as
 * PyTorch DDP's: the params' grads averaged over the ranks by all-reduces of
 * flat buckets, started while backward is still running.
 *
 * Buckets. The params go into buckets in reverse order of the list -- the
 * order backward finishes them, the last layer first -- each bucket one dtype
 * and up to cap bytes (the first up to first_cap, small, so that the
 * communication begins early), each a flat buffer of its params' elements.
 *
 * A step. prepare() arms the reducer: it sets the thread's leaf-ready hook
 * (autograd.c). When backward finishes a param's grad, the hook copies it into
 * its bucket; when a bucket is full, it is started (MPI_Iallreduce), in bucket
 * order: bucket k starts only after bucket k-1, so every rank starts the same
 * collectives in the same order whatever order its own backward finished them
 * in. Open MPI moves the data of a nonblocking collective only inside MPI
 * calls, so each later readiness also tests the buckets in flight. When the
 * pass ends (the hook's NULL call), the params it did not reach count as ready
 * with zeros and the buckets left start: by the time backward returns, every
 * rank has started every bucket (so the user may call other collectives before
 * finish). finish() waits, divides by the world size and writes each param's
 * .grad -- in place, or a new tensor when it had none: a param no rank used
 * gets zeros (an optimizer then sees a zero grad, not a missing one).
 *
 * Deterministic mode (moe_set_deterministic at prepare): a bucket is
 * all-gathered instead (MPI_Iallgather) and summed in rank order, ((g0 + g1) +
 * g2) + ..., so the result is bitwise the same on every rank and every run;
 * it costs world_size times the bucket's memory and bytes on the wire.
 *
 * Local params (expert shards, owned by one rank) are not sent: finish only
 * divides their grads by the world size, as the mean over every rank's
 * samples asks. In a 1-rank world nothing is armed, copied or sent: finish
 * only gives the params without a grad their zeros.
 *
 * The checks: new() and prepare() exchange one small description per rank
 * (when moe_dist_set_checks is on) -- the layout, the mode, and any argument
 * error of the rank's own -- so that a mismatch is the same error on every
 * rank instead of a hang. finish() exchanges nothing (the buckets may already
 * be in flight, and a collective there could cross them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

typedef struct {
  moe_tensor *t; /* retained */
  int bucket;    /* -1: a local param */
  int64_t off;   /* in its bucket, elements */
  int ready;     /* this step */
} rparam;

typedef struct {
  moe_dtype dt;
  int64_t n;       /* elements */
  int pending;     /* params not ready yet this step */
  moe_tensor *buf; /* [n] */
  void *gathered;  /* [world * n] in deterministic mode */
  moe_comm_req *req;
  int state;   /* 0 idle, 1 in flight, 2 done */
  int divided; /* finish: the whole buffer divided in place (a param needed a copy) */
} bucket;

struct moe_reducer {
  int n, nlocal, nb, world;
  rparam *p; /* the params, then the local ones */
  bucket *b;
  struct {
    moe_tensor *t;
    int i;
  } * map; /* tensor -> index into p (open addressing) */
  size_t mask;
  uint64_t layout; /* a hash of the layout, compared between ranks */
  const moe_comm *comm;
  int next;       /* the next bucket to start */
  int touched;    /* this pass made one of our params ready */
  int pass_ended; /* a pass that touched our params has ended since prepare */
  int in_pass;    /* the hook has been called in the running pass */
  moe_reducer_stats st;
};

static int on_ready(moe_tensor *leaf, void *ud);

static int checks_on(void) {
  moe_dist_info i;
  moe_dist_get_info(&i);
  return i.checks;
}

/* ---------------------------------------------------------------- the exchange */

/* the same size as dist.c's description of a collective, and numbered past its
 * collectives (R_NEW, R_PREPARE), so that a rank in a reducer's exchange and a
 * rank in a collective's see each other's call and both raise the mismatch */
enum { R_NEW = 100, R_PREPARE = 101 };
typedef struct {
  int32_t what, n, nlocal, nb, det;
  uint64_t layout;
  char error[224];
} rdesc;
_Static_assert(sizeof(rdesc) == 256, "a reducer's description is as long as a collective's (dist.c)");

/* 0 when every rank agrees with this one, else -1 with the same error on
 * every rank ("fn: rank r: ..."); err is this rank's own error or "" */
static int agree(const moe_reducer *r, int what, int det, const char *fn, const char *err) {
  int world = moe_dist_world_size();
  if (world == 1 || !checks_on()) return err[0] ? moe_error("%s: %s", fn, err) : 0;
  rdesc me, *d = malloc(sizeof me * (size_t)world);
  if (!d) return moe_error("%s: out of memory", fn);
  memset(&me, 0, sizeof me);
  me.what = what ? R_PREPARE : R_NEW;
  me.det = det;
  if (r) {
    me.n = r->n;
    me.nlocal = r->nlocal;
    me.nb = r->nb;
    me.layout = r->layout;
  }
  snprintf(me.error, sizeof me.error, "%s", err);
  if (moe_dist_host_comm()->all_gather_bytes(&me, sizeof me, d)) {
    free(d);
    return -1;
  }
  int rc = 0;
  /* (which call each rank made comes first: a collective's description has
   * its shape where this one has its error) */
  for (int k = 1; k < world && !rc; k++) {
    if (d[k].what != d[0].what) {
      const char *w0 = d[0].what == R_PREPARE ? "Reducer:prepare" : d[0].what == R_NEW ? "Reducer" : "a collective";
      const char *wk = d[k].what == R_PREPARE ? "Reducer:prepare" : d[k].what == R_NEW ? "Reducer" : "a collective";
      rc = moe_error("%s: the ranks called different functions (rank 0 %s, rank %d %s): every rank builds, "
                     "prepares and finishes its reducer at the same points",
                     fn, w0, k, wk);
    }
  }
  for (int k = 0; k < world && !rc; k++)
    if (d[k].error[0]) rc = moe_error("%s: rank %d: %s", fn, k, d[k].error);
  for (int k = 1; k < world && !rc; k++) {
    if (d[k].n != d[0].n || d[k].nlocal != d[0].nlocal || d[k].nb != d[0].nb || d[k].layout != d[0].layout)
      rc = moe_error("%s: the ranks' params differ: rank 0 has %d (%d local) in %d buckets, rank %d %d (%d local) "
                     "in %d buckets, or their dtypes, sizes or bucket caps differ (every rank passes the same model's "
                     "params in the same order)",
                     fn, d[0].n, d[0].nlocal, d[0].nb, k, d[k].n, d[k].nlocal, d[k].nb);
    else if (d[k].det != d[0].det)
      rc = moe_error("%s: the ranks disagree on the deterministic mode: rank 0 %s, rank %d %s "
                     "(moe.set_deterministic on every rank)",
                     fn, d[0].det ? "on" : "off", k, d[k].det ? "on" : "off");
  }
  free(d);
  return rc;
}

int moe_reducer_fail(const char *msg) {
  if (moe_dist_init()) return -1;
  agree(NULL, 0, 0, "Reducer", msg && *msg ? msg : "a bad argument");
  return -1;
}

/* ---------------------------------------------------------------- building it */

static size_t hash_ptr(const void *t) { return (size_t)(((uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull); }

static int find(const moe_reducer *r, const moe_tensor *t) {
  for (size_t i = hash_ptr(t) & r->mask;; i = (i + 1) & r->mask) {
    if (r->map[i].t == t) return r->map[i].i;
    if (!r->map[i].t) return -1;
  }
}

static void map_add(moe_reducer *r, moe_tensor *t, int idx) {
  size_t i = hash_ptr(t) & r->mask;
  while (r->map[i].t) i = (i + 1) & r->mask;
  r->map[i].t = t;
  r->map[i].i = idx;
}

static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001B3ull; }

/* why t cannot be param i of the list `what`, into err ("" when it can) */
static void check_param(const moe_reducer *r, const moe_tensor *t, const char *what, int i, char *err, size_t n) {
  char s[160];
  if (!t) snprintf(err, n, "%s[%d] is not a tensor", what, i + 1);
  else if (!t->requires_grad || t->grad_fn)
    snprintf(err, n, "%s[%d] (%s %s) %s", what, i + 1, moe_dtype_name(t->dtype), moe_shape_str(t, s),
             t->grad_fn ? "is not a leaf (it was computed by an op): pass the parameters themselves"
                        : "does not require grad (a parameter has requires_grad = true)");
  else if (t->dtype != MOE_F32 && t->dtype != MOE_F64)
    snprintf(err, n, "%s[%d] is %s: the reducer takes float32 and float64 params", what, i + 1,
             moe_dtype_name(t->dtype));
  else if (t->device != MOE_CPU)
    snprintf(err, n,
             "%s[%d] is on the device: the reducer takes host params for now (the NCCL backend will take device "
             "ones)",
             what, i + 1);
  else if (find(r, t) >= 0)
    snprintf(err, n, "%s[%d] is listed twice (params and local_params hold each once)", what, i + 1);
  else err[0] = 0;
}

/* takes the hook off this thread when it is ours */
static void disarm(moe_reducer *r) {
  void *ud = NULL;
  if (moe_get_leaf_ready_hook(&ud) == on_ready && ud == r) moe_set_leaf_ready_hook(NULL, NULL, NULL);
}

void moe_reducer_free(moe_reducer *r) {
  if (!r) return;
  disarm(r);
  for (int k = 0; k < r->nb; k++) {
    if (r->b[k].state == 1 && r->comm) r->comm->wait(r->b[k].req);
    moe_tensor_release(r->b[k].buf);
    free(r->b[k].gathered);
  }
  for (int i = 0; i < r->n + r->nlocal; i++) moe_tensor_release(r->p[i].t);
  free(r->p);
  free(r->b);
  free(r->map);
  free(r);
}

moe_reducer *moe_reducer_new(moe_tensor *const *params, int n, moe_tensor *const *local, int nlocal, double cap_mb,
                             double first_cap_mb) {
  const char *fn = "Reducer";
  char err[176] = "";
  if (moe_dist_init()) return NULL;
  moe_reducer *r = calloc(1, sizeof *r);
  size_t cap = 16;
  while (cap < 2 * (size_t)(n + nlocal)) cap *= 2;
  if (r) {
    r->p = calloc((size_t)(n + nlocal) + 1, sizeof *r->p);
    r->b = calloc((size_t)n + 1, sizeof *r->b);
    r->map = calloc(cap, sizeof *r->map);
    r->mask = cap - 1;
  }
  if (!r || !r->p || !r->b || !r->map) {
    snprintf(err, sizeof err, "out of memory");
    goto fail;
  }
  r->world = moe_dist_world_size();
  r->comm = moe_dist_host_comm();
  if (n < 0 || nlocal < 0) snprintf(err, sizeof err, "negative param counts");
  else if (!(cap_mb > 0) || !(first_cap_mb >= 0))
    snprintf(err, sizeof err, "bucket caps must be positive MiB, got %g and %g", cap_mb, first_cap_mb);
  for (int i = 0; i < n + nlocal && !err[0]; i++) {
    moe_tensor *t = i < n ? params[i] : local[i - n];
    check_param(r, t, i < n ? "params" : "local_params", i < n ? i : i - n, err, sizeof err);
    if (err[0]) break;
    moe_tensor_retain(t);
    r->p[i].t = t;
    r->p[i].bucket = -1;
    r->n += i < n;
    r->nlocal += i >= n;
    map_add(r, t, i);
  }
  if (err[0]) goto fail;
  /* the buckets: the list reversed, one dtype each, cut at the cap */
  int64_t capb = (int64_t)(cap_mb * 1048576.0), firstb = first_cap_mb > 0 ? (int64_t)(first_cap_mb * 1048576.0) : capb;
  if (firstb > capb) firstb = capb; /* (as DDP: the first bucket is never the larger) */
  r->st.cap_bytes = capb;
  r->st.first_cap_bytes = firstb;
  uint64_t h = 0xCBF29CE484222325ull;
  for (int i = n - 1; i >= 0; i--) {
    moe_tensor *t = r->p[i].t;
    int64_t ne = moe_numel(t), es = (int64_t)moe_dtype_size(t->dtype);
    bucket *b = r->nb ? &r->b[r->nb - 1] : NULL;
    int64_t lim = r->nb == 1 ? firstb : capb;
    if (!b || b->dt != t->dtype || (b->n > 0 && (b->n + ne) * es > lim)) {
      b = &r->b[r->nb++];
      b->dt = t->dtype;
    }
    r->p[i].bucket = (int)(b - r->b);
    r->p[i].off = b->n;
    b->n += ne;
    h = mix(mix(mix(h, (uint64_t)t->dtype), (uint64_t)ne), (uint64_t)r->p[i].bucket);
  }
  for (int i = n; i < n + nlocal; i++) h = mix(mix(h, (uint64_t)r->p[i].t->dtype), (uint64_t)moe_numel(r->p[i].t));
  r->layout = h;
  if (r->world > 1)
    for (int k = 0; k < r->nb; k++) {
      bucket *b = &r->b[k];
      r->st.bytes += b->n * (int64_t)moe_dtype_size(b->dt);
      if (!(b->buf = moe_empty(1, &b->n, b->dt))) {
        snprintf(err, sizeof err, "%s", moe_last_error());
        goto fail;
      }
    }
  else
    for (int k = 0; k < r->nb; k++) r->st.bytes += r->b[k].n * (int64_t)moe_dtype_size(r->b[k].dt);
  if (agree(r, 0, 0, fn, "")) goto fail_quiet;
  r->st.params = r->n;
  r->st.local = r->nlocal;
  r->st.buckets = r->nb;
  r->st.world_size = r->world;
  return r;
fail:
  agree(r, 0, 0, fn, err);
fail_quiet:
  moe_reducer_free(r);
  return NULL;
}

/* ---------------------------------------------------------------- a step */

static int start(moe_reducer *r, bucket *b, int *counter) {
  int rc;
  if (r->st.deterministic) {
    size_t bytes = (size_t)b->n * moe_dtype_size(b->dt) * (size_t)r->world;
    if (!b->gathered && !(b->gathered = malloc(bytes ? bytes : 1)))
      return moe_error("Reducer: out of memory for a bucket of %lld elements", (long long)b->n);
    rc = r->comm->all_gather_start(moe_data(b->buf), b->gathered, b->n, b->dt, &b->req);
  } else {
    rc = r->comm->all_reduce_start(moe_data(b->buf), b->n, b->dt, MOE_DIST_SUM, &b->req);
  }
  if (rc) return -1;
  b->state = 1;
  (*counter)++;
  return 0;
}

/* starts the full buckets from r->next on, in order */
static int start_ready(moe_reducer *r, int *counter) {
  while (r->next < r->nb && r->b[r->next].pending == 0) {
    if (start(r, &r->b[r->next], counter)) return -1;
    r->next++;
  }
  return 0;
}

/* lets MPI move the buckets in flight along */
static int poll(moe_reducer *r) {
  for (int k = 0; k < r->next; k++) {
    bucket *b = &r->b[k];
    if (b->state != 1) continue;
    int done = 0;
    if (r->comm->test(b->req, &done)) {
      b->state = 2; /* (the backend freed the request) */
      return -1;
    }
    if (done) {
      b->state = 2;
      r->st.done_in_backward++;
    }
  }
  return 0;
}

/* param i is ready: its grad into its bucket (zeros for none) */
static int make_ready(moe_reducer *r, int i) {
  rparam *p = &r->p[i];
  bucket *b = &r->b[p->bucket];
  p->ready = 1;
  if (r->st.started_in_backward + r->st.started_at_end > 0) r->st.ready_after_first_start++;
  int64_t ne = moe_numel(p->t);
  moe_tensor *dst = moe_narrow(b->buf, 0, p->off, ne);
  if (!dst) return -1;
  int rc = 0;
  if (p->t->grad) {
    moe_tensor *v = moe_view(dst, p->t->ndim, p->t->shape);
    rc = v ? moe_copy_(v, p->t->grad) : -1;
    moe_tensor_release(v);
  } else {
    r->st.unused++;
    memset(moe_data(dst), 0, (size_t)ne * moe_dtype_size(b->dt));
  }
  moe_tensor_release(dst);
  b->pending--;
  return rc;
}

/* every param not ready yet is ready (no grad this step), and every bucket starts */
static int start_all(moe_reducer *r, int *counter) {
  for (int i = 0; i < r->n; i++)
    if (!r->p[i].ready && make_ready(r, i)) return -1;
  return start_ready(r, counter);
}

/* the first readiness of a pass: when the pass reaches some of our params,
 * those it does not reach get no grad from it -- zeros, ready now, so that
 * their buckets need not wait for the pass's end (DDP's unused parameters) */
static int pass_begins(moe_reducer *r) {
  int reached = 0;
  for (int i = 0; i < r->n && !reached; i++) reached = !r->p[i].ready && moe_backward_reaches(r->p[i].t);
  if (!reached) return 0;
  for (int i = 0; i < r->n; i++)
    if (!r->p[i].ready && !moe_backward_reaches(r->p[i].t) && make_ready(r, i)) return -1;
  return start_ready(r, &r->st.started_in_backward);
}

static int on_ready(moe_tensor *leaf, void *ud) {
  moe_reducer *r = ud;
  if (leaf && !r->in_pass) {
    r->in_pass = 1;
    if (!r->pass_ended && pass_begins(r)) return -1;
  }
  if (!leaf) { /* the pass ended */
    r->in_pass = 0;
    if (!r->touched) return 0;
    r->touched = 0;
    if (!r->pass_ended && start_all(r, &r->st.started_at_end)) return -1;
    r->pass_ended = 1;
    return poll(r);
  }
  int i = find(r, leaf);
  if (i < 0 || i >= r->n) return r->next > 0 ? poll(r) : 0; /* not ours, or a local param */
  if (r->p[i].ready)
    return moe_error(
        "moe.distributed.Reducer: backward ran again after prepare() reached params[%d], whose grad was already "
        "sent; prepare() once per step, before its last backward (accumulate the ones before "
        "without it)",
        i + 1);
  r->touched = 1;
  if (make_ready(r, i) || start_ready(r, &r->st.started_in_backward)) return -1;
  return poll(r);
}

int moe_reducer_prepare(moe_reducer *r) {
  const char *fn = "Reducer:prepare";
  char err[176] = "";
  void *ud = NULL;
  int det = moe_get_deterministic();
  if (r->st.armed) snprintf(err, sizeof err, "already prepared: finish() this step first");
  else if (r->world > 1 && moe_get_leaf_ready_hook(&ud))
    snprintf(err, sizeof err, "another reducer (or leaf-ready hook) is armed on this thread: finish() it first");
  if (r->world > 1 && agree(r, 1, det, fn, err)) return -1;
  if (r->world == 1 && err[0]) return moe_error("%s: %s", fn, err);
  int steps = r->st.steps;
  moe_reducer_stats keep = r->st;
  memset(&r->st, 0, sizeof r->st);
  r->st.params = keep.params;
  r->st.local = keep.local;
  r->st.buckets = keep.buckets;
  r->st.world_size = keep.world_size;
  r->st.bytes = keep.bytes;
  r->st.cap_bytes = keep.cap_bytes;
  r->st.first_cap_bytes = keep.first_cap_bytes;
  r->st.steps = steps;
  r->st.deterministic = det;
  for (int i = 0; i < r->n + r->nlocal; i++) r->p[i].ready = 0;
  for (int k = 0; k < r->nb; k++) r->b[k].pending = 0, r->b[k].state = 0;
  for (int i = 0; i < r->n; i++) r->b[r->p[i].bucket].pending++;
  r->next = r->touched = r->pass_ended = r->in_pass = 0;
  r->st.armed = 1;
  if (r->world > 1) moe_set_leaf_ready_hook(on_ready, r, NULL);
  return 0;
}

static void sum_ranks(bucket *b, int world) {
  int64_t n = b->n;
  if (b->dt == MOE_F32) {
    float *o = (float *)moe_data(b->buf);
    const float *g = b->gathered;
    for (int64_t j = 0; j < n; j++) o[j] = g[j];
    for (int k = 1; k < world; k++)
      for (int64_t j = 0; j < n; j++) o[j] += g[(size_t)k * (size_t)n + (size_t)j];
  } else {
    double *o = (double *)moe_data(b->buf);
    const double *g = b->gathered;
    for (int64_t j = 0; j < n; j++) o[j] = g[j];
    for (int k = 1; k < world; k++)
      for (int64_t j = 0; j < n; j++) o[j] += g[(size_t)k * (size_t)n + (size_t)j];
  }
}

static void divide(moe_tensor *t, int by) {
  int64_t n = moe_numel(t);
  if (t->dtype == MOE_F32)
    for (float *p = (float *)moe_data(t), *e = p + n; p < e; p++) *p /= (float)by;
  else
    for (double *p = (double *)moe_data(t), *e = p + n; p < e; p++) *p /= by;
}

/* dst[0..n) = buf[off..off+n) / by */
static void divide_into(void *dst, const void *buf, int64_t off, int64_t n, moe_dtype dt, int by) {
  if (dt == MOE_F32) {
    const float *s = (const float *)buf + off;
    float *d = dst, w = (float)by;
    for (int64_t j = 0; j < n; j++) d[j] = s[j] / w;
  } else {
    const double *s = (const double *)buf + off;
    double *d = dst;
    for (int64_t j = 0; j < n; j++) d[j] = s[j] / by;
  }
}

/* t.grad = src (a copy), or zeros when src is NULL */
static int set_grad(moe_tensor *t, moe_tensor *src) {
  if (t->grad) return src ? moe_copy_(t->grad, src) : moe_fill_(t->grad, 0.0);
  t->grad = src ? moe_clone(src) : moe_full(t->ndim, t->shape, t->dtype, 0.0);
  return t->grad ? 0 : -1;
}

int moe_reducer_finish(moe_reducer *r) {
  const char *fn = "Reducer:finish";
  if (!r->st.armed) return moe_error("%s: prepare() was not called before this step's backward", fn);
  int rc = 0, g = moe_set_grad_enabled(0);
  if (r->world > 1) {
    disarm(r);
    rc = start_all(r, &r->st.started_in_finish);
    for (int k = 0; k < r->nb; k++) {
      bucket *b = &r->b[k];
      if (b->state == 1 && r->comm->wait(b->req)) rc = -1;
      b->state = 0;
    }
    for (int k = 0; k < r->nb && !rc; k++)
      if (r->st.deterministic) sum_ranks(&r->b[k], r->world);
    /* each grad = its bucket slice / world: one pass, straight into a grad of
     * the same layout (the usual case: backward's own), else through a copy */
    for (int k = 0; k < r->nb && !rc; k++) r->b[k].divided = 0;
    for (int i = 0; i < r->n && !rc; i++) {
      rparam *p = &r->p[i];
      bucket *b = &r->b[p->bucket];
      moe_tensor *gr = p->t->grad;
      if (gr && !b->divided && gr->device == MOE_CPU && gr->dtype == b->dt && moe_is_contiguous(gr) &&
          moe_numel(gr) == moe_numel(p->t)) {
        divide_into(moe_data(gr), moe_data(b->buf), p->off, moe_numel(gr), b->dt, r->world);
        continue;
      }
      /* (the params before it in the bucket have read their slices already) */
      if (!b->divided) divide(b->buf, r->world), b->divided = 1;
      moe_tensor *s = moe_narrow(b->buf, 0, p->off, moe_numel(p->t));
      moe_tensor *v = s ? moe_view(s, p->t->ndim, p->t->shape) : NULL;
      rc = v ? set_grad(p->t, v) : -1;
      moe_tensor_release(v);
      moe_tensor_release(s);
    }
  } else {
    for (int i = 0; i < r->n && !rc; i++)
      if (!r->p[i].t->grad) {
        r->st.unused++;
        rc = set_grad(r->p[i].t, NULL);
      }
  }
  for (int i = r->n; i < r->n + r->nlocal && !rc; i++) {
    moe_tensor *t = r->p[i].t;
    if (!t->grad) rc = set_grad(t, NULL);
    else if (r->world > 1) rc = moe_binary_scalar_(MOE_DIV, t->grad, (double)r->world);
  }
  moe_set_grad_enabled(g);
  r->st.armed = 0;
  r->st.steps++;
  if (rc) return moe_error("%s: %s", fn, moe_last_error());
  return 0;
}

void moe_reducer_get_stats(const moe_reducer *r, moe_reducer_stats *out) { *out = r->st; }

int moe_reducer_bucket_of(const moe_reducer *r, int param) {
  return param >= 0 && param < r->n + r->nlocal ? r->p[param].bucket : -1;
}
