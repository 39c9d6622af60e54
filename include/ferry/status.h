/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/status.h: what every part of ferry's API rests on: the export
 * macro, the version of these headers, the status codes with their texts,
 * the calling thread's detail text of its last failure, and the library's
 * version. Include <ferry.h>, which includes every part; each part also
 * compiles on its own.
 */
#ifndef FERRY_STATUS_H
#define FERRY_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* Version of these headers. The ABI major is the shared library's SONAME. */
#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0

/*
 * Every status code, with its value and text. Codes are only ever appended
 * to; a value once published never changes meaning.
 */
#define FERRY_STATUS_MAP(X)                                                    \
    X(OK, 0, "success")                                                        \
    X(IN_PROGRESS, 1, "operation in progress")                                 \
    X(ERR_INVALID, -1, "invalid argument")                                     \
    X(ERR_NO_MEMORY, -2, "out of memory")                                      \
    X(ERR_NOT_FOUND, -3, "not found")                                          \
    X(ERR_NOT_REGISTERED, -4, "memory not registered")                         \
    X(ERR_OUT_OF_RANGE, -5, "out of range of a registration")                  \
    X(ERR_MISMATCH, -6, "descriptors do not match")                            \
    X(ERR_UNSUPPORTED, -7, "not supported")                                    \
    X(ERR_BUSY, -8, "busy")                                                    \
    X(ERR_TIMEOUT, -9, "timed out")                                            \
    X(ERR_CANCELED, -10, "canceled")                                           \
    X(ERR_PEER_LOST, -11, "peer lost")                                         \
    X(ERR_ABORTED, -12, "aborted by another rank")                             \
    X(ERR_PROTOCOL, -13, "protocol error (malformed blob or message)")         \
    X(ERR_BACKEND, -14, "transport backend error")                             \
    X(ERR_SYSTEM, -15, "system error")

typedef enum ferry_status {
#define FERRY_STATUS_ENUM_(name, value, text) FERRY_##name = (value),
    FERRY_STATUS_MAP(FERRY_STATUS_ENUM_)
#undef FERRY_STATUS_ENUM_
} ferry_status_t;

/*
 * Returns a static, human-readable text for a status code, or "unknown
 * status" for a value this library does not know. Never returns NULL. Any
 * thread.
 */
FERRY_API const char *ferry_status_str(ferry_status_t status);

/*
 * Returns the detail text of the calling thread's most recent failure (for
 * example "ucx: ucp_ep_rkey_unpack: Invalid parameter (peer 'rank3', region
 * 2)"), or "" if this thread has seen none. The text stays valid until the
 * thread's next failing ferry call. Never returns NULL. Any thread.
 */
FERRY_API const char *ferry_last_error(void);

/* Returns the library's version as "major.minor.patch". Any thread. */
FERRY_API const char *ferry_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_STATUS_H */
