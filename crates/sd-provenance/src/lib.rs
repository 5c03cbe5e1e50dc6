//! sd-provenance: disclosure of AI-generated images (in progress).
