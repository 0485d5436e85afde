/* The fork hooks (see fork.h). */
#include "fork.h"
#include "conn.h"
#include "fd-table.h"
#include "self.h"

#include <pthread.h>

static void prepare(void)
{
	kc_lock();
	kc_conn_before_fork_locked();
}

static void parent(void)
{
	kc_unlock();
}

static void child(void)
{
	kc_self_forget();
	kc_conn_in_child_locked();
	kc_unlock();
}

void kc_fork_hooks_install(void)
{
	pthread_atfork(prepare, parent, child);
}
