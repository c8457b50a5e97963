// Package codec turns payload bytes into the sealed objects pgharbor stores, and back.
//
// Every object in a repository is an envelope: an 8-byte header that says how the rest is
// encoded, then the body. The format is never inferred from a key or file name, so one
// repository may hold objects written with different settings (encryption turned on
// later, recipients rotated, compression changed) and every reader decodes each object
// by its own header.
//
// Glossary:
//   - payload: the caller's bytes (a WAL segment, a bundle of data files, a manifest).
//   - envelope / sealed object: header + body, the bytes a storage.Backend stores.
//   - recipient: an age public key ("age1…"). Writing needs only recipients, so a host
//     that takes backups cannot read them back.
//   - identity: an age secret key ("AGE-SECRET-KEY-1…") that decrypts objects sealed to
//     its recipient. Only restore hosts need one.
//   - fingerprint: a short, stable, non-secret name for a recipient (see Fingerprint),
//     stored in the repository's pgharbor.json.
//   - write key / signing key: an Ed25519 secret key ("PGHARBOR-SIGN-KEY-1…") held by hosts
//     that write; Sign appends a signature over an object's bytes and its name.
//   - verify key: the write key's public half ("pgharbor-verify1…"), held by readers;
//     NewReaderFor refuses objects it did not sign for the name they are read under.
//
// # Envelope format, version 1
//
//	offset size field
//	0      4    magic "PGHB"
//	4      1    format version, 1
//	5      1    compression id: 0 none, 1 zstd
//	6      1    encryption id: 0 none, 1 age public-key recipients, 2 age passphrase (scrypt)
//	7      1    flags: 0x01 a SHA-256 of the payload follows (DigestSize bytes),
//	            0x02 the object ends with a signature trailer; other bits are rejected
//
// Body when the encryption id is not 0:
//
//	age(header copy (8 bytes) || inner)
//
// The age file (https://age-encryption.org/v1) carries its own header and authenticated
// 64 KiB STREAM chunks, so truncation, reordering and flipped bytes are detected. The copy
// of the 8-byte header as the first plaintext bytes binds the clear header to the
// authenticated data: a reader rejects an object whose clear header differs from the copy
// (otherwise flipping the compression id would return compressed bytes as the payload).
//
// Body when the encryption id is 0:
//
//	inner || CRC-32C (Castagnoli, 4 bytes big-endian) of every preceding byte, header included
//
// so that unencrypted objects also detect truncation and bit rot. The trailer is checked
// at the end of the object, so a consumer of an unencrypted stream may already hold
// damaged bytes when the error comes: write to a temporary file, keep it after io.EOF.
//
// inner is the payload itself (compression 0) or one or more zstd frames (compression 1;
// the WAL receiver ends one at each flush) with the content checksum on (off in objects
// sealed whole, such as bundles, which the AEAD or the trailer covers) and
// a window of at most 8 MiB; readers refuse larger windows, which bounds their memory. Nothing may follow the age stream or the trailer, except on a
// signed object (flag 0x02):
//
//	envelope || key id (KeyIDSize bytes) || Ed25519 signature
//
// over a domain tag, the object's name and the SHA-256 of the envelope as stored. The flag
// is cleared in the header copy and in the CRC-32C, so that signing an existing object needs
// no key but the write key (see Sign); the signature covers the stored header. A reader with
// verify keys therefore refuses unsigned objects instead of trusting the flag.
//
// # Keys and rotation
//
// Config.Encryption only chooses how new objects are written. Readers use every
// configured identity (and the passphrase, if any), whatever Encryption says, so rotating
// keys means: add the new recipient (new objects are sealed to it), keep the old identity
// on restore hosts as long as objects sealed to it exist.
//
// Passphrase mode runs scrypt (age's default work factor 2^18: 1–3 s of CPU and 256 MiB
// of memory) once per object written and once per object read. It suits a few small
// objects, not a WAL archive; prefer recipients.
package codec
