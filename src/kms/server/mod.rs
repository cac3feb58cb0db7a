//! PLACEHOLDER: `envseal kms serve`, an Alibaba-compatible KMS server.
