/* Decode only the rows and columns of a JPEG that a top-down crop reads.
 *
 * A person crop needs a window of the image. libjpeg-turbo can skip the inverse DCT,
 * upsampling and colour conversion of every 8/16-pixel column block outside a window
 * (jpeg_crop_scanline), skip rows above it without producing pixels (jpeg_skip_scanlines)
 * and stop after its last row. The pixels it produces are the ones a full decode
 * produces (same library, same integer IDCT and fancy upsampling); the Python side
 * checks that on every test image.
 *
 * Entropy (Huffman) decoding cannot be skipped that way: it is sequential, so every row
 * above the window's last one is still entropy-decoded. A JPEG with a restart marker after
 * every MCU (vps_add_restarts: a lossless rewrite, the DCT coefficients are copied as they
 * are) has independently decodable MCUs; for such files the window's MCUs (plus the
 * neighbours chroma upsampling reads) are cut out of the byte stream into a small JPEG of their own, and
 * only that is decoded (vps_decode_region's first path).
 *
 * Built on first use by vitpose_scale/data/jpeg_region.py and called through ctypes
 * (no Python C API: one small shared library linked against the system libjpeg).
 *
 * Every input is hostile: the entry points check their arguments (window inside the image,
 * a pixel limit against decompression bombs) and never read outside buf or write outside
 * out. scripts/fuzz_jpeg_asan.sh drives an AddressSanitizer build over mutated JPEGs.
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h> /* ERREXIT1 */

enum {
  VPS_OK = 0,
  VPS_ERROR = 1,        /* libjpeg refused the data: message in err */
  VPS_SIZE = 2,         /* header size differs from the caller's: nothing decoded */
  VPS_UNSUPPORTED = 3,  /* CMYK/YCCK, an EXIF rotation, block smoothing: the caller decodes it whole */
  VPS_TOO_LARGE = 4,    /* more pixels than the caller's limit: nothing decoded or allocated */
  VPS_BAD_ARGS = 5,     /* a window outside the image, a null buffer: nothing done */
};

struct vps_error {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
};

static void vps_error_exit(j_common_ptr cinfo) {
  struct vps_error *e = (struct vps_error *)cinfo->err;
  longjmp(e->jump, 1);
}

/* Warnings (e.g. "corrupt data") are not printed; the caller checks completeness itself. */
static void vps_quiet(j_common_ptr cinfo) { (void)cinfo; }

/* Corrupt-data warnings as errors (vps_add_restarts): a truncated or damaged file must not be
 * rewritten into a complete-looking one with grey/garbage blocks baked in, and a bomb whose data
 * runs out after a few bytes stops there instead of zero-filling a gigapixel. */
static void vps_strict_emit(j_common_ptr cinfo, int msg_level) {
  if (msg_level < 0) (*cinfo->err->error_exit)(cinfo);
}

/* A quiet error manager that longjmps back (the caller's setjmp) instead of exiting. */
static struct jpeg_error_mgr *vps_errors(struct vps_error *e) {
  jpeg_std_error(&e->pub);
  e->pub.error_exit = vps_error_exit;
  e->pub.output_message = vps_quiet;
  return &e->pub;
}

/* libjpeg's message for the error that sent us back, into err. */
static void vps_message(j_common_ptr cinfo, char *err, int err_len) {
  if (err && err_len > 0) {
    char msg[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, msg);
    snprintf(err, (size_t)err_len, "%s", msg);
  }
}

static unsigned read16(const JOCTET *p, int little) {
  return little ? (unsigned)(p[0] | (p[1] << 8)) : (unsigned)((p[0] << 8) | p[1]);
}

static unsigned long read32(const JOCTET *p, int little) {
  return little ? (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) |
                      ((unsigned long)p[3] << 24)
                : ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) |
                      (unsigned long)p[3];
}

/* EXIF orientation (tag 0x0112 of IFD0) of an APP1 marker, 1 when absent or unreadable.
 * OpenCV rotates/flips images whose orientation is 2..8; those take the whole-image path. */
static int exif_orientation(const jpeg_saved_marker_ptr m) {
  if (m->data_length < 14 || memcmp(m->data, "Exif\0\0", 6) != 0) return 1;
  const JOCTET *tiff = m->data + 6;
  unsigned long n = m->data_length - 6;
  int little;
  if (tiff[0] == 'I' && tiff[1] == 'I') little = 1;
  else if (tiff[0] == 'M' && tiff[1] == 'M') little = 0;
  else return 1;
  unsigned long ifd = read32(tiff + 4, little);
  if (ifd + 2 > n) return 1;
  unsigned count = read16(tiff + ifd, little);
  for (unsigned i = 0; i < count; i++) {
    unsigned long entry = ifd + 2 + 12ul * i;
    if (entry + 12 > n) return 1;
    if (read16(tiff + entry, little) == 0x0112) return (int)read16(tiff + entry + 8, little);
  }
  return 1;
}

/* 1 when libjpeg smooths this file's blocks on output: a progressive file whose low-frequency
 * coefficients (the ten libjpeg looks at) are not all complete, i.e. damaged, cut short or missing
 * scans (found by the fuzz). Call after jpeg_start_decompress / jpeg_read_coefficients (all scans
 * read). Smoothing reads DC values up to two blocks away and takes the edge of a
 * jpeg_crop_scanline crop for the image's edge, so a window would differ from a whole decode; a
 * sequential rewrite of the coefficients is not smoothed at all, so it would not be lossless. */
static int block_smoothing(j_decompress_ptr cinfo) {
  if (!cinfo->progressive_mode || !cinfo->do_block_smoothing || !cinfo->coef_bits) return 0;
  for (int ci = 0; ci < cinfo->num_components; ci++)
    for (int k = 0; k < 10; k++)
      if (cinfo->coef_bits[ci][k] != 0) return 1;
  return 0;
}

/* Decode (at least) rows [y0, y1) and columns [x0, x1) of the height x width JPEG in buf.
 * Its pixel (r, c) goes to out + ((off_y + r) * stride + off_x + c) * 3. Returns a VPS_* code. */
static int decode_region_at(const unsigned char *buf, unsigned long len, unsigned char *out, int stride, int off_x,
                            int off_y, int height, int width, int x0, int y0, int x1, int y1, char *err,
                            int err_len) {
  struct jpeg_decompress_struct cinfo;
  struct vps_error jerr;
  volatile int status = VPS_OK;
  cinfo.err = vps_errors(&jerr);
  jpeg_create_decompress(&cinfo);
  if (setjmp(jerr.jump)) {
    vps_message((j_common_ptr)&cinfo, err, err_len);
    jpeg_destroy_decompress(&cinfo);
    return VPS_ERROR;
  }
  jpeg_mem_src(&cinfo, buf, len);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if ((int)cinfo.image_width != width || (int)cinfo.image_height != height) {
    status = VPS_SIZE;
  } else if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    status = VPS_UNSUPPORTED;
  } else {
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
      if (m->marker == JPEG_APP0 + 1 && exif_orientation(m) > 1) status = VPS_UNSUPPORTED;
  }
  if (status != VPS_OK || x0 >= x1 || y0 >= y1) {
    jpeg_destroy_decompress(&cinfo);
    return status;
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  /* Fancy upsampling of subsampled chroma reads the neighbouring chroma samples, which a window
   * starting right at a block boundary would not have decoded (the first row after a skip and
   * the first column of a crop then differ from a whole decode). One whole iMCU of context on
   * each side makes the pixels inside [x0, x1) x [y0, y1) exact. */
  int imcu_w = cinfo.max_h_samp_factor * DCTSIZE, imcu_h = cinfo.max_v_samp_factor * DCTSIZE;
  int from_x = (x0 / imcu_w - 1) * imcu_w, to_x = x1 + imcu_w, from_y = (y0 / imcu_h - 1) * imcu_h;
  if (from_x < 0) from_x = 0;
  if (to_x > width) to_x = width;
  if (from_y < 0) from_y = 0;
  if (block_smoothing(&cinfo)) {
    /* Not even a whole decode here would do: libjpeg versions smooth differently (2.1 and 3.1
     * differ by a few levels), so only the caller's own whole decode gives its pixels. */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return VPS_UNSUPPORTED;
  }
  JDIMENSION col = (JDIMENSION)from_x, cols = (JDIMENSION)(to_x - from_x);
  if (col > 0 || cols < cinfo.output_width)
    jpeg_crop_scanline(&cinfo, &col, &cols); /* may widen the window to whole column blocks */
  if (from_y > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)from_y);
  JSAMPROW rows[16];
  while ((int)cinfo.output_scanline < y1) {
    int first = (int)cinfo.output_scanline, n = y1 - first;
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++)
      rows[i] = out + ((size_t)(off_y + first + i) * (size_t)stride + (size_t)off_x + col) * 3;
    jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
  }
  jpeg_abort_decompress(&cinfo); /* the rows below the window are never decoded */
  jpeg_destroy_decompress(&cinfo);
  return VPS_OK;
}

/* ---------------------------------------------------------------- restart-marked files */

/* What the restart path needs to know of a file: where its SOF size fields and its entropy-
 * coded data are, the MCU size, and where each MCU's bytes start and end. */
struct rst_layout {
  unsigned long sof_size_at; /* offset of the SOF's 16-bit height (width follows) */
  unsigned long scan_at;     /* first byte of entropy-coded data */
  int mcu_w, mcu_h, cols, rows;
};

/* 1 when buf is a one-scan sequential Huffman JPEG with a restart marker after every MCU
 * (restart interval 1); anything else (progressive, arithmetic, other intervals, several
 * scans, a damaged header) returns 0 and takes the general path. */
static int rst_parse(const unsigned char *buf, unsigned long len, int height, int width, struct rst_layout *lay) {
  unsigned long p = 2;
  int restart_interval = 0, have_sof = 0, ncomp = 0, hmax = 1, vmax = 1;
  if (len < 4 || buf[0] != 0xFF || buf[1] != 0xD8) return 0;
  while (p + 4 <= len) {
    if (buf[p] != 0xFF) return 0;
    unsigned char marker = buf[p + 1];
    if (marker == 0xFF) { p++; continue; } /* fill byte */
    unsigned long seg = ((unsigned long)buf[p + 2] << 8) | buf[p + 3];
    if (seg < 2 || p + 2 + seg > len) return 0;
    const unsigned char *d = buf + p + 4;
    if (marker == 0xC0 || marker == 0xC1) { /* baseline / extended sequential, Huffman */
      if (seg < 8 || d[0] != 8) return 0;
      if ((int)(((unsigned)d[1] << 8) | d[2]) != height || (int)(((unsigned)d[3] << 8) | d[4]) != width) return 0;
      ncomp = d[5];
      if (ncomp != 1 && ncomp != 3) return 0;
      if (seg < 8ul + 3ul * (unsigned long)ncomp) return 0;
      for (int i = 0; i < ncomp; i++) {
        int h = d[6 + 3 * i + 1] >> 4, v = d[6 + 3 * i + 1] & 15;
        if (h > hmax) hmax = h;
        if (v > vmax) vmax = v;
      }
      lay->sof_size_at = p + 5;
      have_sof = 1;
    } else if (marker >= 0xC2 && marker <= 0xCF && marker != 0xC4) {
      return 0; /* progressive, lossless, hierarchical or arithmetic-coded (0xC4: Huffman tables) */
    } else if (marker == 0xDD) {
      if (seg != 4) return 0;
      restart_interval = ((int)d[0] << 8) | d[1];
    } else if (marker == 0xDA) {
      /* The length is checked before d[0] is read: a 2-byte SOS may end the buffer. */
      if (seg < 3 || seg != 6ul + 2ul * d[0]) return 0;
      if (!have_sof || restart_interval != 1 || d[0] != ncomp) return 0;
      lay->scan_at = p + 2 + seg;
      /* One component: its MCU is one block whatever its sampling factors; else the iMCU. */
      lay->mcu_w = ncomp == 1 ? DCTSIZE : hmax * DCTSIZE;
      lay->mcu_h = ncomp == 1 ? DCTSIZE : vmax * DCTSIZE;
      lay->cols = (width + lay->mcu_w - 1) / lay->mcu_w;
      lay->rows = (height + lay->mcu_h - 1) / lay->mcu_h;
      return lay->scan_at < len;
    } else if (marker == 0xD8 || marker == 0xD9 || (marker >= 0xD0 && marker <= 0xD7)) {
      return 0;
    }
    p += 2 + seg;
  }
  return 0;
}

/* Offsets where MCU i's bytes start (starts[i]) and end (ends[i]), for all cols*rows MCUs
 * (starts/ends may be NULL: only check). 0 when the scan does not hold exactly that many
 * restart intervals, or when a marker is not the one due (RST0..RST7 in turn): libjpeg resyncs
 * on a misnumbered marker by skipping or inserting intervals, so the cut-out intervals would not
 * be the MCUs a whole decode shows there. In entropy-coded data 0xFF is followed by 0x00 (a
 * stuffed byte), 0xFF (fill), a restart marker or the end. */
static int rst_index(const unsigned char *buf, unsigned long len, const struct rst_layout *lay,
                     unsigned long *starts, unsigned long *ends) {
  long n = (long)lay->cols * lay->rows, i = 0;
  unsigned long p = lay->scan_at;
  if (starts) starts[0] = p;
  while (p + 1 < len) {
    const unsigned char *ff = memchr(buf + p, 0xFF, len - 1 - p);
    if (!ff) return 0;
    p = (unsigned long)(ff - buf);
    unsigned char b = buf[p + 1];
    if (b == 0x00) { p += 2; continue; }
    if (b == 0xFF) { p += 1; continue; }
    if (b >= 0xD0 && b <= 0xD7) {
      if (i + 1 >= n || b != 0xD0 + (i & 7)) return 0;
      if (ends) ends[i] = p;
      i++;
      if (starts) starts[i] = p + 2;
      p += 2;
      continue;
    }
    if (ends) ends[i] = p; /* EOI (or another marker): the last interval ends here */
    i++;
    return i == n;
  }
  return 0;
}

/* The window's MCUs (and neighbours where upsampling needs them) as a JPEG of their own, decoded into
 * its place in out. -1: not a restart-marked file (nothing done); else a VPS_* code. */
static int decode_region_rst(const unsigned char *buf, unsigned long len, unsigned char *out, int height, int width,
                             int x0, int y0, int x1, int y1, char *err, int err_len) {
  struct rst_layout lay;
  if (!rst_parse(buf, len, height, width, &lay)) return -1;
  long n = (long)lay.cols * lay.rows;
  unsigned long *starts = malloc(sizeof(unsigned long) * (size_t)n * 2);
  if (!starts) return -1;
  unsigned long *ends = starts + n;
  if (!rst_index(buf, len, &lay, starts, ends)) {
    free(starts);
    return -1;
  }
  /* The MCUs holding the window, plus a neighbour where the window's edge pixels lie within
   * 2 pixels of an MCU boundary: fancy upsampling of 2x subsampled chroma reads one chroma
   * sample (2 pixels) beyond a pixel's own, which may sit in that neighbour. */
  int c0 = x0 / lay.mcu_w, c1 = (x1 - 1) / lay.mcu_w + 1;
  int r0 = y0 / lay.mcu_h, r1 = (y1 - 1) / lay.mcu_h + 1;
  if (x0 % lay.mcu_w < 2 && c0 > 0) c0--;
  if ((x1 - 1) % lay.mcu_w >= lay.mcu_w - 2 && c1 < lay.cols) c1++;
  if (y0 % lay.mcu_h < 2 && r0 > 0) r0--;
  if ((y1 - 1) % lay.mcu_h >= lay.mcu_h - 2 && r1 < lay.rows) r1++;
  /* The cut keeps the image's own last partial MCU where it reaches the right/bottom edge. */
  int sub_w = (c1 == lay.cols ? width : c1 * lay.mcu_w) - c0 * lay.mcu_w;
  int sub_h = (r1 == lay.rows ? height : r1 * lay.mcu_h) - r0 * lay.mcu_h;
  unsigned long size = lay.scan_at + 2;
  for (int r = r0; r < r1; r++)
    size += ends[(long)r * lay.cols + c1 - 1] - starts[(long)r * lay.cols + c0] + 2ul * (unsigned long)(c1 - c0);
  unsigned char *sub = malloc(size);
  if (!sub) {
    free(starts);
    return -1;
  }
  memcpy(sub, buf, lay.scan_at); /* every table and marker up to the scan's data, as they are */
  sub[lay.sof_size_at] = (unsigned char)(sub_h >> 8);
  sub[lay.sof_size_at + 1] = (unsigned char)(sub_h & 255);
  sub[lay.sof_size_at + 2] = (unsigned char)(sub_w >> 8);
  sub[lay.sof_size_at + 3] = (unsigned char)(sub_w & 255);
  unsigned long q = lay.scan_at;
  long k = 0;
  for (int r = r0; r < r1; r++) {
    for (int c = c0; c < c1; c++, k++) {
      if (k > 0) { /* restart markers count 0..7 in the new stream's own order */
        sub[q++] = 0xFF;
        sub[q++] = (unsigned char)(0xD0 + ((k - 1) & 7));
      }
      long m = (long)r * lay.cols + c;
      memcpy(sub + q, buf + starts[m], ends[m] - starts[m]);
      q += ends[m] - starts[m];
    }
  }
  sub[q++] = 0xFF;
  sub[q++] = 0xD9;
  free(starts);
  int off_x = c0 * lay.mcu_w, off_y = r0 * lay.mcu_h;
  int status = decode_region_at(sub, q, out, width, off_x, off_y, sub_h, sub_w, 0, 0, sub_w, sub_h, err, err_len);
  free(sub);
  return status;
}

/* 1 (and a message) when height x width is more than max_pixels. */
static int too_large(unsigned long long height, unsigned long long width, unsigned long long max_pixels, char *err,
                     int err_len) {
  if (height * width <= max_pixels) return 0; /* both < 2^32: no overflow */
  if (err && err_len > 0)
    snprintf(err, (size_t)err_len, "%llux%llu pixels is more than the limit of %llu", width, height, max_pixels);
  return 1;
}

/* Decode (at least) rows [y0, y1) and columns [x0, x1) of the JPEG in buf into out, an RGB
 * image of height x width x 3 bytes laid out row by row (pixels outside the window are left
 * as they are). The window must lie inside the image (0 <= x0 <= x1 <= width, the same for y),
 * and height x width must be at most max_pixels. Returns a VPS_* code. */
int vps_decode_region(const unsigned char *buf, unsigned long len, unsigned char *out, int height, int width,
                      int x0, int y0, int x1, int y1, unsigned long long max_pixels, char *err, int err_len) {
  if (err && err_len > 0) err[0] = 0;
  /* out is the caller's height x width x 3 buffer: every row pointer below is computed from
   * these, so a window outside it (or a negative one, e.g. 2^31 wrapped by ctypes) is refused. */
  if (!buf || !out || height <= 0 || width <= 0 || x0 < 0 || y0 < 0 || x0 > x1 || y0 > y1 || x1 > width ||
      y1 > height) {
    if (err && err_len > 0)
      snprintf(err, (size_t)err_len, "window (%d, %d, %d, %d) is not inside the %dx%d image", x0, y0, x1, y1,
               width, height);
    return VPS_BAD_ARGS;
  }
  if (too_large((unsigned)height, (unsigned)width, max_pixels, err, err_len)) return VPS_TOO_LARGE;
  if (x0 < x1 && y0 < y1) {
    int status = decode_region_rst(buf, len, out, height, width, x0, y0, x1, y1, err, err_len);
    if (status >= 0) return status;
  }
  return decode_region_at(buf, len, out, width, 0, 0, height, width, x0, y0, x1, y1, err, err_len);
}

/* 1 when vps_decode_region takes the restart path for this file (for tests and reports). */
int vps_has_mcu_restarts(const unsigned char *buf, unsigned long len, int height, int width) {
  struct rst_layout lay;
  if (!buf || height <= 0 || width <= 0) return 0;
  return rst_parse(buf, len, height, width, &lay) && rst_index(buf, len, &lay, NULL, NULL);
}

/* ---------------------------------------------------------------- lossless rewrite */

/* The rewrite's output: a malloc'ed buffer that grows by doubling. Our own (not jpeg_mem_dest):
 * jpeg_mem_dest frees its first buffer when it grows but only tells the caller the new one at
 * jpeg_finish_compress, so after an error the caller cannot know which pointer to free. */
struct vps_dest {
  struct jpeg_destination_mgr pub;
  unsigned char *buf;
  size_t cap, len;
};

static void vps_dest_init(j_compress_ptr cinfo) {
  struct vps_dest *d = (struct vps_dest *)cinfo->dest;
  d->pub.next_output_byte = d->buf;
  d->pub.free_in_buffer = d->cap;
}

static boolean vps_dest_grow(j_compress_ptr cinfo) { /* called when the buffer is full */
  struct vps_dest *d = (struct vps_dest *)cinfo->dest;
  unsigned char *bigger = realloc(d->buf, d->cap * 2);
  if (!bigger) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 10); /* d->buf is still ours to free */
  d->buf = bigger;
  d->pub.next_output_byte = bigger + d->cap;
  d->pub.free_in_buffer = d->cap;
  d->cap *= 2;
  return TRUE;
}

static void vps_dest_term(j_compress_ptr cinfo) {
  struct vps_dest *d = (struct vps_dest *)cinfo->dest;
  d->len = d->cap - d->pub.free_in_buffer;
}

/* buf rewritten with a restart marker after every MCU: the DCT coefficients, quantisation
 * tables and markers (EXIF, ICC, comments) are copied as they are, so every decoder
 * produces the same pixels; the Huffman tables are re-optimised and the output is
 * sequential (a progressive source becomes baseline). Refused (VPS_ERROR, *out NULL): anything
 * libjpeg cannot read and any file it reads with a corrupt-data warning (truncated, damaged: a
 * rewrite would hide the damage); VPS_TOO_LARGE: more than max_pixels pixels. *out is malloc'ed
 * (vps_free). */
int vps_add_restarts(const unsigned char *buf, unsigned long len, unsigned char **out, unsigned long *out_len,
                     unsigned long long max_pixels, char *err, int err_len) {
  struct jpeg_decompress_struct src;
  struct jpeg_compress_struct dst;
  struct vps_error jerr; /* one error manager for both: either may fail */
  volatile int have_dst = 0;
  if (err && err_len > 0) err[0] = 0;
  if (!out || !out_len) return VPS_BAD_ARGS;
  *out = NULL;
  *out_len = 0;
  if (!buf) return VPS_BAD_ARGS;
  /* Set before setjmp and not changed after it (only what it points to is), so it is valid after
   * a longjmp without being volatile. */
  struct vps_dest *const dest = calloc(1, sizeof(struct vps_dest));
  if (!dest) return VPS_ERROR;
  src.err = dst.err = vps_errors(&jerr);
  jerr.pub.emit_message = vps_strict_emit;
  jpeg_create_decompress(&src);
  if (setjmp(jerr.jump)) {
    vps_message((j_common_ptr)&src, err, err_len);
    if (have_dst) jpeg_destroy_compress(&dst);
    jpeg_destroy_decompress(&src);
    free(dest->buf);
    free(dest);
    return VPS_ERROR;
  }
  jpeg_mem_src(&src, buf, len);
  jpeg_save_markers(&src, JPEG_COM, 0xFFFF);
  for (int m = 0; m < 16; m++) jpeg_save_markers(&src, JPEG_APP0 + m, 0xFFFF);
  jpeg_read_header(&src, TRUE);
  if (too_large(src.image_height, src.image_width, max_pixels, err, err_len)) {
    jpeg_destroy_decompress(&src);
    free(dest);
    return VPS_TOO_LARGE;
  }
  jvirt_barray_ptr *coefficients = jpeg_read_coefficients(&src);
  if (block_smoothing(&src)) {
    if (err && err_len > 0)
      snprintf(err, (size_t)err_len, "progressive scans incomplete: decoders smooth its blocks, a rewrite would not");
    jpeg_destroy_decompress(&src);
    free(dest);
    return VPS_ERROR;
  }
  jpeg_create_compress(&dst);
  have_dst = 1;
  jpeg_copy_critical_parameters(&src, &dst);
  dst.restart_interval = 1;
  dst.optimize_coding = TRUE;
  dest->cap = 4096; /* as jpeg_mem_dest: ordinary files (and the fuzz) run the grow path */
  dest->buf = malloc(dest->cap);
  if (!dest->buf) ERREXIT1(&dst, JERR_OUT_OF_MEMORY, 11);
  dest->pub.init_destination = vps_dest_init;
  dest->pub.empty_output_buffer = vps_dest_grow;
  dest->pub.term_destination = vps_dest_term;
  dst.dest = &dest->pub;
  jpeg_write_coefficients(&dst, coefficients);
  for (jpeg_saved_marker_ptr m = src.marker_list; m; m = m->next) {
    /* The writer emits its own JFIF (APP0) and Adobe (APP14) headers: don't repeat them. */
    if (dst.write_JFIF_header && m->marker == JPEG_APP0 && m->data_length >= 5 &&
        memcmp(m->data, "JFIF", 5) == 0)
      continue;
    if (dst.write_Adobe_marker && m->marker == JPEG_APP0 + 14 && m->data_length >= 5 &&
        memcmp(m->data, "Adobe", 5) == 0)
      continue;
    jpeg_write_marker(&dst, m->marker, m->data, m->data_length);
  }
  jpeg_finish_compress(&dst);
  jpeg_destroy_compress(&dst);
  jpeg_finish_decompress(&src);
  jpeg_destroy_decompress(&src);
  *out = dest->buf;
  *out_len = (unsigned long)dest->len;
  free(dest);
  return VPS_OK;
}

void vps_free(void *p) { free(p); }
