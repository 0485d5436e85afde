/*
 * Latency samples of one benchmark run and the single JSON line the orchestrator
 * (bench/transport.ts) parses: {"n":..,"mean_us":..,"p50_us":..,"p99_us":..,"max_us":..}.
 * Shared by the kdbus and the sd-bus programs so both report exactly alike.
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct samples {
	uint64_t *ns;
	size_t n, cap;
};

static inline void samples_init(struct samples *s, size_t cap)
{
	s->ns = calloc(cap, sizeof *s->ns);
	s->n = 0;
	s->cap = cap;
	if (!s->ns) {
		perror("calloc");
		exit(1);
	}
}

static inline void samples_add(struct samples *s, uint64_t ns)
{
	if (s->n < s->cap)
		s->ns[s->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted samples. */
static inline double samples_pct(const struct samples *s, double p)
{
	size_t rank = (size_t)(p * (double)s->n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > s->n)
		rank = s->n;
	return (double)s->ns[rank - 1];
}

static inline void samples_print(struct samples *s, const char *extra)
{
	if (s->n == 0) {
		fprintf(stderr, "no samples\n");
		exit(1);
	}
	qsort(s->ns, s->n, sizeof *s->ns, cmp_u64);
	double sum = 0;
	for (size_t i = 0; i < s->n; i++)
		sum += (double)s->ns[i];
	printf("{\"n\":%zu,\"mean_us\":%.3f,\"p50_us\":%.3f,\"p99_us\":%.3f,\"max_us\":%.3f%s%s}\n", s->n,
	       sum / (double)s->n / 1e3, samples_pct(s, 0.50) / 1e3, samples_pct(s, 0.99) / 1e3,
	       (double)s->ns[s->n - 1] / 1e3, extra ? "," : "", extra ? extra : "");
	fflush(stdout);
}

/* Touches one byte per page (and the last byte): the receiver makes the payload resident
 * and readable, as any consumer must, at the same cost on every transport. */
static inline uint64_t touch_pages(const void *data, size_t len)
{
	const volatile uint8_t *p = data;
	uint64_t sum = 0;
	for (size_t i = 0; i < len; i += 4096)
		sum += p[i];
	if (len)
		sum += p[len - 1];
	return sum;
}

#endif
