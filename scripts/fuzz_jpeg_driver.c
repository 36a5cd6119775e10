/* Mutation fuzzer for vitpose_scale/data/jpeg_region.c (built by scripts/fuzz_jpeg_asan.sh with
 * -fsanitize=address,undefined: every out-of-bounds access, double free, leak or undefined
 * behaviour aborts the run with a report; the input is in CRASH_FILE).
 *
 *   fuzz_jpeg_driver ITERATIONS SEED CRASH_FILE seed.jpg...
 *
 * The library source is included, so its static functions are reachable: besides memory
 * safety the driver checks what the Python side relies on:
 *   - every window's pixels (restart cut path or plain window path) equal a whole decode's;
 *   - windows outside the image are refused (VPS_BAD_ARGS), sizes above the limit too;
 *   - a rewrite that succeeds (vps_add_restarts) decodes to the source's pixels.
 * Inputs are copied into buffers of their exact size, so a one-byte over-read is caught.
 */
#include "jpeg_region.c"

#define MAX_PIXELS (1ull << 22) /* keeps mutated sizes cheap; the limit itself is under test */

static uint64_t rng_state;
static uint64_t next_rand(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}
static unsigned long below(unsigned long n) { return n ? (unsigned long)(next_rand() % n) : 0; }

struct blob {
  unsigned char *data;
  unsigned long len;
};

static long pixel_findings, contract_findings;
static long windows_decoded, windows_compared, cut_path_files, rewrites_ok, rewrites_refused; /* coverage */

static const char *crash_file;
static const struct blob *current; /* the mutation being exercised */

/* A wrong answer (not a sanitizer report): counted, and the input kept next to CRASH_FILE. */
static void finding(long *counter, const char *what, int a, int b, int c, int d) {
  (*counter)++;
  fprintf(stderr, "finding: %s (%d, %d, %d, %d)\n", what, a, b, c, d);
  char path[4096];
  snprintf(path, sizeof path, "%s.finding%ld.jpg", crash_file, pixel_findings + contract_findings);
  FILE *f = fopen(path, "wb");
  if (f) {
    if (current->len) fwrite(current->data, 1, current->len, f);
    fclose(f);
  }
}

/* The size libjpeg reads from the header (0: unreadable). */
static int header_size(const unsigned char *buf, unsigned long len, int *height, int *width) {
  struct jpeg_decompress_struct cinfo;
  struct vps_error jerr;
  cinfo.err = vps_errors(&jerr);
  jpeg_create_decompress(&cinfo);
  if (setjmp(jerr.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  jpeg_mem_src(&cinfo, buf, len);
  jpeg_read_header(&cinfo, TRUE);
  *height = (int)cinfo.image_height;
  *width = (int)cinfo.image_width;
  jpeg_destroy_decompress(&cinfo);
  return *height > 0 && *width > 0;
}

/* The size in the first frame header, found by walking the segments (as the Python side's
 * image_size does): there even when libjpeg cannot read the header, e.g. when it is cut short. */
static int sof_size(const unsigned char *buf, unsigned long len, int *height, int *width) {
  unsigned long p = 2;
  while (p + 4 <= len && buf[p] == 0xFF) {
    unsigned char m = buf[p + 1];
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      if (p + 9 > len) return 0;
      *height = (buf[p + 5] << 8) | buf[p + 6];
      *width = (buf[p + 7] << 8) | buf[p + 8];
      return *height > 0 && *width > 0;
    }
    p += 2 + (((unsigned long)buf[p + 2] << 8) | buf[p + 3]);
  }
  return 0;
}

static struct blob read_file(const char *path) {
  struct blob b = {NULL, 0};
  FILE *f = fopen(path, "rb");
  if (!f) return b;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  b.data = malloc(n > 0 ? (size_t)n : 1);
  b.len = n > 0 && fread(b.data, 1, (size_t)n, f) == (size_t)n ? (unsigned long)n : 0;
  fclose(f);
  return b;
}

static void write_file(const char *path, const unsigned char *data, unsigned long len) {
  FILE *f = fopen(path, "wb");
  if (!f) return;
  if (len) fwrite(data, 1, len, f);
  fclose(f);
}

/* Where the entropy-coded data starts (end of the first SOS), or len. */
static unsigned long scan_start(const unsigned char *buf, unsigned long len) {
  unsigned long p = 2;
  while (p + 4 <= len && buf[p] == 0xFF) {
    unsigned long seg = ((unsigned long)buf[p + 2] << 8) | buf[p + 3];
    if (buf[p + 1] == 0xDA) return p + 2 + seg < len ? p + 2 + seg : len;
    p += 2 + seg;
  }
  return len;
}

static const unsigned char interesting_bytes[] = {0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x0F, 0x10, 0x11, 0x21,
                                                  0x22, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xC2, 0xC4, 0xD0, 0xD7,
                                                  0xD8, 0xD9, 0xDA, 0xDB, 0xDD, 0xE1, 0xFE, 0xFF};
static const unsigned interesting_words[] = {0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 255, 256, 0x7FFF, 0x8000, 0xFFFF};

/* One to four random edits of src, header-aware (most bugs live in the header and marker parsing). */
static struct blob mutate(const struct blob *src) {
  unsigned long cap = src->len + 256, len = src->len;
  unsigned char *d = malloc(cap);
  memcpy(d, src->data, src->len);
  int edits = below(2) ? 1 : 2 + (int)below(3); /* often one edit: the file stays mostly decodable */
  for (int e = 0; e < edits; e++) {
    unsigned long header = scan_start(d, len) + 16;
    if (header > len) header = len;
    switch (below(14)) { /* 9..13: the entropy-coded data */
    case 0: /* a bit anywhere */
      if (len) d[below(len)] ^= (unsigned char)(1u << below(8));
      break;
    case 1: /* a byte in the header */
      if (header) d[below(header)] = interesting_bytes[below(sizeof interesting_bytes)];
      break;
    case 2: /* a 16-bit field in the header (lengths, sizes, counts) */
      if (header >= 2) {
        unsigned long at = below(header - 1);
        unsigned w = below(3) ? interesting_words[below(sizeof interesting_words / sizeof *interesting_words)]
                              : (unsigned)below(65536);
        d[at] = (unsigned char)(w >> 8);
        d[at + 1] = (unsigned char)w;
      }
      break;
    case 3: /* truncate */
      len = below(len + 1);
      break;
    case 4: { /* delete a chunk */
      if (!len) break;
      unsigned long at = below(len), n = 1 + below(64);
      if (at + n > len) n = len - at;
      memmove(d + at, d + at + n, len - at - n);
      len -= n;
      break;
    }
    case 5: { /* copy a chunk over another place */
      if (len < 2) break;
      unsigned long from = below(len), to = below(len), n = 1 + below(32);
      if (from + n > len) n = len - from;
      if (to + n > len) n = len - to;
      memmove(d + to, d + from, n);
      break;
    }
    case 6: /* a marker where it does not belong */
      if (len + 2 <= cap) {
        unsigned long at = below(len + 1);
        memmove(d + at + 2, d + at, len - at);
        d[at] = 0xFF;
        d[at + 1] = interesting_bytes[below(sizeof interesting_bytes)];
        len += 2;
      }
      break;
    case 7: { /* renumber, drop or duplicate a restart marker */
      if (len < 2) break;
      unsigned long start = below(len - 1);
      for (unsigned long p = start; p + 1 < len; p++) {
        if (d[p] == 0xFF && d[p + 1] >= 0xD0 && d[p + 1] <= 0xD7) {
          unsigned long how = below(3);
          if (how == 0) d[p + 1] = (unsigned char)(0xD0 + below(8));
          else if (how == 1) { memmove(d + p, d + p + 2, len - p - 2); len -= 2; }
          else if (len + 2 <= cap) { memmove(d + p + 2, d + p, len - p); len += 2; }
          break;
        }
      }
      break;
    }
    case 8: /* trailing garbage, or an end-of-image marker early */
      if (below(2) && len + 8 <= cap) {
        for (int i = 0; i < 8; i++) d[len++] = (unsigned char)below(256);
      } else if (len >= 2) {
        unsigned long at = below(len - 1);
        d[at] = 0xFF;
        d[at + 1] = 0xD9;
      }
      break;
    default: /* a byte in the entropy-coded data */
      if (len > header) d[header + below(len - header)] = (unsigned char)below(256);
    }
  }
  struct blob out = {malloc(len ? len : 1), len}; /* exactly len bytes: ASan sees any over-read */
  memcpy(out.data, d, len);
  free(d);
  return out;
}

/* The window (x0, y0, x1, y1) of the height x width JPEG in buf, against a whole decode. */
static void check_window(const unsigned char *buf, unsigned long len, int height, int width, const unsigned char *whole,
                         int x0, int y0, int x1, int y1) {
  size_t bytes = (size_t)height * (size_t)width * 3;
  unsigned char *out = calloc(bytes, 1);
  char err[JMSG_LENGTH_MAX];
  int status = vps_decode_region(buf, len, out, height, width, x0, y0, x1, y1, MAX_PIXELS, err, sizeof err);
  windows_decoded += status == VPS_OK;
  windows_compared += status == VPS_OK && whole != NULL;
  if (status == VPS_OK && whole) {
    for (int y = y0; y < y1; y++)
      if (memcmp(out + ((size_t)y * width + x0) * 3, whole + ((size_t)y * width + x0) * 3, (size_t)(x1 - x0) * 3)) {
        finding(&pixel_findings, "window differs from the whole decode", x0, y0, x1, y1);
        break;
      }
  }
  free(out);
}

/* Every entry point on buf, taken to be height x width (the header's size, or another one). */
static void exercise(const unsigned char *buf, unsigned long len, int height, int width) {
  char err[JMSG_LENGTH_MAX];
  cut_path_files += vps_has_mcu_restarts(buf, len, height, width);
  if (height <= 0 || width <= 0 || (unsigned long long)height * (unsigned long long)width > MAX_PIXELS) return;
  size_t bytes = (size_t)height * (size_t)width * 3;
  /* Windows outside the image: refused before anything is touched. */
  unsigned char *out = calloc(bytes, 1);
  const int bad[][4] = {{-1, 0, 1, 1}, {0, 0, width + 1, 1}, {0, 0, 1, height + 1}, {2, 0, 1, 1},
                        {INT32_MIN, 0, width, height}, {0, 0, INT32_MAX, height}};
  for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++)
    if (vps_decode_region(buf, len, out, height, width, bad[i][0], bad[i][1], bad[i][2], bad[i][3], MAX_PIXELS, err,
                          sizeof err) != VPS_BAD_ARGS)
      finding(&contract_findings, "bad window accepted", bad[i][0], bad[i][1], bad[i][2], bad[i][3]);
  if (vps_decode_region(buf, len, out, height, width, 0, 0, width, height, (unsigned long long)height * width - 1, err,
                        sizeof err) != VPS_TOO_LARGE)
    finding(&contract_findings, "pixel limit not applied", 0, 0, width, height);
  /* The whole image by the plain path (libjpeg without crop or skip), then windows. */
  unsigned char *whole = calloc(bytes, 1);
  int whole_ok = decode_region_at(buf, len, whole, width, 0, 0, height, width, 0, 0, width, height, err,
                                  sizeof err) == VPS_OK;
  check_window(buf, len, height, width, whole_ok ? whole : NULL, 0, 0, width, height);
  for (int i = 0; i < 4; i++) {
    int x0 = (int)below((unsigned long)width), y0 = (int)below((unsigned long)height);
    int x1 = x0 + 1 + (int)below((unsigned long)(width - x0)), y1 = y0 + 1 + (int)below((unsigned long)(height - y0));
    check_window(buf, len, height, width, whole_ok ? whole : NULL, x0, y0, x1, y1);
  }
  check_window(buf, len, height, width, whole_ok ? whole : NULL, width - 1, height - 1, width, height);
  check_window(buf, len, height, width, NULL, 0, 0, 0, 0); /* empty */
  /* A size other than the header's: VPS_SIZE, nothing written. */
  if (width > 1)
    vps_decode_region(buf, len, out, height, width - 1, 0, 0, width - 1, height, MAX_PIXELS, err, sizeof err);
  free(out);
  /* The rewrite: refused, or lossless (same size, same pixels). */
  unsigned char *rewritten = NULL;
  unsigned long rewritten_len = 0;
  int header_h = 0, header_w = 0;
  if (!header_size(buf, len, &header_h, &header_w) || header_h != height || header_w != width) {
    free(whole);
    return; /* the rewrite does not depend on the size passed; done once, with the header's */
  }
  if (vps_add_restarts(buf, len, &rewritten, &rewritten_len, MAX_PIXELS, err, sizeof err) == VPS_OK) {
    rewrites_ok++;
    unsigned char *again = calloc(bytes, 1);
    int h2 = 0, w2 = 0;
    if (!header_size(rewritten, rewritten_len, &h2, &w2) || h2 != height || w2 != width)
      finding(&contract_findings, "rewrite changed the size", height, width, h2, w2);
    else if (decode_region_at(rewritten, rewritten_len, again, width, 0, 0, height, width, 0, 0, width, height, err,
                              sizeof err) == VPS_OK &&
             whole_ok && memcmp(again, whole, bytes))
      finding(&pixel_findings, "rewrite is not lossless", 0, 0, width, height);
    int x0 = (int)below((unsigned long)width), y0 = (int)below((unsigned long)height);
    check_window(rewritten, rewritten_len, height, width, whole_ok ? whole : NULL, x0, y0, width, height);
    free(again);
    vps_free(rewritten);
  } else {
    rewrites_refused++;
    if (rewritten) finding(&contract_findings, "failed rewrite left a buffer", 0, 0, 0, 0);
  }
  free(whole);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s ITERATIONS SEED CRASH_FILE seed.jpg...\n", argv[0]);
    return 2;
  }
  long iterations = atol(argv[1]);
  rng_state = 0x9E3779B97F4A7C15ull ^ (uint64_t)atoll(argv[2]) * 0x2545F4914F6CDD1Dull;
  if (!rng_state) rng_state = 1;
  crash_file = argv[3];
  int n_seeds = 0, n_rst = 0;
  struct blob *seeds = calloc((size_t)(argc - 4) * 2, sizeof *seeds);
  int *is_rst = calloc((size_t)(argc - 4) * 2, sizeof *is_rst);
  for (int i = 4; i < argc; i++) {
    struct blob b = read_file(argv[i]);
    if (!b.data) continue;
    seeds[n_seeds++] = b;
    /* and its restart-marked rewrite, so the cut path gets fuzzed too */
    unsigned char *rst = NULL;
    unsigned long rst_len = 0;
    char err[JMSG_LENGTH_MAX];
    if (vps_add_restarts(b.data, b.len, &rst, &rst_len, MAX_PIXELS, err, sizeof err) == VPS_OK) {
      struct blob r = {malloc(rst_len), rst_len};
      memcpy(r.data, rst, rst_len);
      vps_free(rst);
      is_rst[n_seeds] = 1;
      seeds[n_seeds++] = r;
      n_rst++;
    }
  }
  if (!n_seeds) {
    fprintf(stderr, "no seeds\n");
    return 2;
  }
  for (long it = 0; it < iterations; it++) {
    /* Half the time a restart-marked seed: the cut path has the most parsing of its own. */
    int pick = (int)below((unsigned long)n_seeds);
    if (n_rst && below(2))
      for (int k = (int)below((unsigned long)n_rst) + 1, i = 0; i < n_seeds; i++)
        if (is_rst[i] && --k == 0) {
          pick = i;
          break;
        }
    const struct blob *seed = &seeds[pick];
    struct blob m = mutate(seed);
    write_file(crash_file, m.data, m.len); /* what ASan's report is about, if it comes */
    current = &m;
    int height = 0, width = 0;
    int seed_h = 0, seed_w = 0;
    if (!header_size(seed->data, seed->len, &seed_h, &seed_w)) sof_size(seed->data, seed->len, &seed_h, &seed_w);
    /* The size the file now declares (what the Python side passes after reading the header),
     * the seed's (an annotation written before the damage) and a random one. */
    if (header_size(m.data, m.len, &height, &width) || sof_size(m.data, m.len, &height, &width))
      exercise(m.data, m.len, height, width);
    if (seed_h != height || seed_w != width) exercise(m.data, m.len, seed_h, seed_w);
    exercise(m.data, m.len, 1 + (int)below(96), 1 + (int)below(96));
    free(m.data);
  }
  for (int i = 0; i < n_seeds; i++) free(seeds[i].data);
  free(seeds);
  free(is_rst);
  printf("mutations: %ld\npixel findings: %ld\ncontract findings: %ld\n", iterations, pixel_findings,
         contract_findings);
  printf("coverage: %ld windows decoded (%ld compared with a whole decode), %ld restart-cut files, %ld rewrites, "
         "%ld refused\n", windows_decoded, windows_compared, cut_path_files, rewrites_ok, rewrites_refused);
  return pixel_findings || contract_findings ? 1 : 0;
}
