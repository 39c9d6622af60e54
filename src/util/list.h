/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Intrusive circular doubly linked lists: a ferry__list_t inside each item,
 * and one as the head. An item that is in no list points to itself, so
 * ferry__list_linked() tells whether it is queued and ferry__list_del() may
 * be called on it twice. Every list of the core and the backends is one of
 * these; nothing here allocates.
 */
#ifndef FERRY_UTIL_LIST_H
#define FERRY_UTIL_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ferry__list {
    struct ferry__list *prev, *next;
} ferry__list_t;

#define ferry__container_of(ptr, type, member)                                \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Visits every link of the list at head; the loop body may delete the
 * link it is at (the next one is read before the body runs). */
#define ferry__list_each(l, tmp, head)                                        \
    for ((l) = (head)->next, (tmp) = (l)->next; (l) != (head);                \
         (l) = (tmp), (tmp) = (l)->next)

static inline void ferry__list_init(ferry__list_t *l)
{
    l->prev = l->next = l;
}

static inline bool ferry__list_empty(const ferry__list_t *head)
{
    return head->next == head;
}

/* Whether an item's link is in a list (the item was initialised). */
static inline bool ferry__list_linked(const ferry__list_t *item)
{
    return item->next != item;
}

/* Inserts item right after at: at the front when at is the head. */
static inline void ferry__list_add(ferry__list_t *at, ferry__list_t *item)
{
    item->next = at->next;
    item->prev = at;
    at->next->prev = item;
    at->next = item;
}

static inline void ferry__list_add_tail(ferry__list_t *head, ferry__list_t *item)
{
    ferry__list_add(head->prev, item);
}

/* Takes item out of its list and leaves it pointing to itself. */
static inline void ferry__list_del(ferry__list_t *item)
{
    item->prev->next = item->next;
    item->next->prev = item->prev;
    ferry__list_init(item);
}

#endif
