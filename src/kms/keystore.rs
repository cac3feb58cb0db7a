//! PLACEHOLDER: the key store engine shared by the local provider and `kms serve`.
