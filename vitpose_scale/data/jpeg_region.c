/* Decode only the rows and columns of a JPEG that a top-down crop reads.
 *
 * A person crop needs a window of the image. libjpeg-turbo can skip the inverse DCT,
 * upsampling and colour conversion of every 8/16-pixel column block outside a window
 * (jpeg_crop_scanline), skip rows above it without producing pixels (jpeg_skip_scanlines)
 * and stop after its last row. The pixels it produces are the ones a full decode
 * produces (same library, same integer IDCT and fancy upsampling); the Python side
 * checks that on every test image.
 *
 * Built on first use by vitpose_scale/data/jpeg_region.py and called through ctypes
 * (no Python C API: one small shared library linked against the system libjpeg).
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

enum {
  VPS_OK = 0,
  VPS_ERROR = 1,        /* libjpeg refused the data: message in err */
  VPS_SIZE = 2,         /* header size differs from the caller's: nothing decoded */
  VPS_UNSUPPORTED = 3,  /* CMYK/YCCK or an EXIF rotation: the caller decodes the whole image */
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

/* Decode (at least) rows [y0, y1) and columns [x0, x1) of the JPEG in buf into out, an RGB
 * image of height x width x 3 bytes laid out row by row (pixels outside the window are left
 * as they are). Returns a VPS_* code. */
int vps_decode_region(const unsigned char *buf, unsigned long len, unsigned char *out, int height, int width,
                      int x0, int y0, int x1, int y1, char *err, int err_len) {
  struct jpeg_decompress_struct cinfo;
  struct vps_error jerr;
  volatile int status = VPS_OK;
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = vps_error_exit;
  jerr.pub.output_message = vps_quiet;
  jpeg_create_decompress(&cinfo);
  if (setjmp(jerr.jump)) {
    if (err && err_len > 0) {
      char msg[JMSG_LENGTH_MAX];
      (*cinfo.err->format_message)((j_common_ptr)&cinfo, msg);
      snprintf(err, (size_t)err_len, "%s", msg);
    }
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
  JDIMENSION col = (JDIMENSION)from_x, cols = (JDIMENSION)(to_x - from_x);
  if (col > 0 || cols < cinfo.output_width)
    jpeg_crop_scanline(&cinfo, &col, &cols); /* may widen the window to whole column blocks */
  if (from_y > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)from_y);
  JSAMPROW rows[16];
  while ((int)cinfo.output_scanline < y1) {
    int first = (int)cinfo.output_scanline, n = y1 - first;
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++) rows[i] = out + ((size_t)(first + i) * (size_t)width + col) * 3;
    jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
  }
  jpeg_abort_decompress(&cinfo); /* the rows below the window are never decoded */
  jpeg_destroy_decompress(&cinfo);
  return VPS_OK;
}
