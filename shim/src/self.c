/* The calling process's and thread's ids (see self.h). */
#include "self.h"
#include "sys.h"

KC_SELF_TLS pid_t kc_self_pid_kept;
KC_SELF_TLS pid_t kc_self_tid_kept;

pid_t kc_self_tid(void)
{
	pid_t tid = kc_self_tid_kept;
	if (!tid)
		tid = kc_self_tid_kept = (pid_t)kc_sys_gettid();
	return tid;
}

void kc_self_forget(void)
{
	kc_self_pid_kept = 0;
	kc_self_tid_kept = 0;
}
