/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench's results (report.h): the table on stdout, CSV and JSON.
 */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static const char *const col_names[NCOLS] = {
    "B/W (GB/Sec)", "Avg Lat. (us)", "Med Lat. (us)", "Avg Prep (us)",
    "P99 Prep (us)", "Avg Post (us)", "P99 Post (us)", "Avg Tx (us)",
    "P99 Tx (us)"};
static const char *const col_keys[NCOLS] = {
    "bw_gbps", "avg_lat_us", "med_lat_us", "avg_prep_us", "p99_prep_us",
    "avg_post_us", "p99_post_us", "avg_tx_us", "p99_tx_us"};

static double max_d(double a, double b)
{
    return a > b ? a : b;
}

result_t report_combine(const char *op, size_t size, size_t batch, size_t iters,
                        size_t warmup, const rank_res_t *res, size_t n)
{
    result_t row = {.op = op, .size = size, .batch = batch, .iters = iters,
                    .warmup = warmup};
    rank_res_t sum = {0};

    for (size_t i = 0; i < n; i++) {
        const rank_res_t *x = &res[i];

        sum.bytes += x->bytes;
        sum.loop_ns = max_d(x->loop_ns, sum.loop_ns);
        sum.prep_sum += x->prep_sum;
        sum.prep_n += x->prep_n;
        sum.prep_p99 = max_d(x->prep_p99, sum.prep_p99);
        sum.post_sum += x->post_sum;
        sum.post_n += x->post_n;
        sum.post_p99 = max_d(x->post_p99, sum.post_p99);
        sum.tx_sum += x->tx_sum;
        sum.tx_n += x->tx_n;
        sum.tx_p99 = max_d(x->tx_p99, sum.tx_p99);
        sum.tx_p50 = max_d(x->tx_p50, sum.tx_p50);
        row.checked_n += x->checked_n;
        row.checked_bytes += x->checked_bytes;
    }
    row.v[BW] = sum.bytes / sum.loop_ns;
    row.v[AVG_LAT] = sum.loop_ns / (double)iters / 1e3;
    row.v[MED_LAT] = sum.tx_p50 / 1e3;
    row.v[AVG_PREP] = sum.prep_sum / sum.prep_n / 1e3;
    row.v[P99_PREP] = sum.prep_p99 / 1e3;
    row.v[AVG_POST] = sum.post_sum / sum.post_n / 1e3;
    row.v[P99_POST] = sum.post_p99 / 1e3;
    row.v[AVG_TX] = sum.tx_sum / sum.tx_n / 1e3;
    row.v[P99_TX] = sum.tx_p99 / 1e3;
    return row;
}

void report_header(const char *title)
{
    printf("\n%s\n%-16s%-12s%-9s%-8s", title, "Block Size (B)", "Batch Size",
           "Iters", "Warmup");
    for (int i = 0; i < NCOLS; i++) {
        printf(i + 1 < NCOLS ? "%-15s" : "%s\n", col_names[i]);
    }
    for (int i = 0; i < 16 + 12 + 9 + 8 + 15 * NCOLS - 4; i++) {
        putchar('-');
    }
    putchar('\n');
}

void report_row(const result_t *r)
{
    printf("%-16zu%-12zu%-9zu%-8zu", r->size, r->batch, r->iters, r->warmup);
    for (int i = 0; i < NCOLS; i++) {
        bool last = i + 1 == NCOLS;

        if (isnan(r->v[i])) {
            printf(last ? "\n" : "%-15s", "");
        } else {
            printf(last ? "%.3f\n" : "%-15.3f", r->v[i]);
        }
    }
    fflush(stdout);
}

static FILE *open_out(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        die("cannot write %s: %s", path, strerror(errno));
    }
    return f;
}

static void close_out(FILE *f, const char *path)
{
    if (ferror(f) || fclose(f) != 0) {
        die("writing %s failed", path);
    }
}

/* The configuration columns every row carries, for CSV and JSON alike. */
#define CONF_KEYS "op", "initiator_mem", "target_mem", "alloc", "layout", \
                  "scheme", "ranks", "threads", "block_size", \
                  "batch_size", "iters", "warmup"
static const char *const conf_keys[] = {CONF_KEYS};
enum { NCONF = sizeof(conf_keys) / sizeof(conf_keys[0]) };

/* Writes row r's configuration values as text, JSON-quoted or not. A
 * MEMCPY row is --threads threads copying within one process. */
static void conf_values(const options_t *o, const result_t *r, bool json,
                        char v[NCONF][32])
{
    const char *q = json ? "\"" : "";
    bool local = strcmp(r->op, "MEMCPY") == 0;

    snprintf(v[0], 32, "%s%s%s", q, r->op, q);
    snprintf(v[1], 32, "%s%s%s", q, kind_names[o->init_mem], q);
    snprintf(v[2], 32, "%s%s%s", q, kind_names[o->target_mem], q);
    snprintf(v[3], 32, "%s%s%s", q, local ? "mmap" : alloc_names[o->alloc], q);
    snprintf(v[4], 32, "%s%s%s", q, layout_names[o->layout], q);
    snprintf(v[5], 32, "%s%s%s", q, local ? "none" : scheme_names[o->scheme], q);
    snprintf(v[6], 32, "%d", local ? 1 : o->world);
    snprintf(v[7], 32, "%d", o->threads);
    snprintf(v[8], 32, "%zu", r->size);
    snprintf(v[9], 32, "%zu", r->batch);
    snprintf(v[10], 32, "%zu", r->iters);
    snprintf(v[11], 32, "%zu", r->warmup);
}

void report_files(const options_t *o, const result_t *res, size_t n)
{
    char v[NCONF][32];
    FILE *f;

    if (o->csv_path != NULL) {
        f = open_out(o->csv_path);
        for (int c = 0; c < NCONF + NCOLS; c++) {
            fprintf(f, "%s%s", c ? "," : "",
                    c < NCONF ? conf_keys[c] : col_keys[c - NCONF]);
        }
        for (size_t i = 0; i < n; i++) {
            conf_values(o, &res[i], false, v);
            fputc('\n', f);
            for (int c = 0; c < NCONF; c++) {
                fprintf(f, "%s%s", c ? "," : "", v[c]);
            }
            for (int c = 0; c < NCOLS; c++) {
                if (isnan(res[i].v[c])) {
                    fputc(',', f);
                } else {
                    fprintf(f, ",%.6f", res[i].v[c]);
                }
            }
        }
        fprintf(f, "\n");
        close_out(f, o->csv_path);
    }
    if (o->json_path != NULL) {
        f = open_out(o->json_path);
        fprintf(f, "{\"tool\": \"ferry-bench\", \"ferry_version\": \"%s\", "
                   "\"bw_unit\": \"1e9 B/s\", \"time_unit\": \"us\", "
                   "\"wait\": \"%s\", \"target\": \"%s\", \"progress_thread\": "
                   "%s, \"checked\": %s, \"results\": [",
                ferry_version(), wait_names[o->wait_mode],
                target_names[o->target_mode],
                o->progress_thread ? "true" : "false",
                o->check ? "true" : "false");
        for (size_t i = 0; i < n; i++) {
            conf_values(o, &res[i], true, v);
            fprintf(f, "%s\n  {", i ? "," : "");
            for (int c = 0; c < NCONF; c++) {
                fprintf(f, "%s\"%s\": %s", c ? ", " : "", conf_keys[c], v[c]);
            }
            for (int c = 0; c < NCOLS; c++) {
                if (isnan(res[i].v[c])) {
                    fprintf(f, ", \"%s\": null", col_keys[c]);
                } else {
                    fprintf(f, ", \"%s\": %.6f", col_keys[c], res[i].v[c]);
                }
            }
            fprintf(f, "}");
        }
        fprintf(f, "\n]}\n");
        close_out(f, o->json_path);
    }
}
