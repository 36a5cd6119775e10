"""Loading an exported Hugging Face directory with transformers while catching every warning and
log line it emits (an export must load silently)."""
import io
import logging
import warnings


def load_hf_quietly(path):
    """(model, loading info, [every warning or log line transformers emitted])."""
    import transformers

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    transformers.logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = transformers.VitPoseForPoseEstimation.from_pretrained(str(path), output_loading_info=True)
    finally:
        transformers.logging.get_logger().removeHandler(handler)
    return model, info, [line for line in log.getvalue().splitlines() if line] + [str(w.message) for w in caught]
