/* Prints CRASH_AFTER lines like hello, then faults with faults masked (FAULTMASK): the fault
 * cannot be taken and the core locks up, without any fault handler running or printing. */
#include "sim.h"

#ifndef CRASH_AFTER
#define CRASH_AFTER 3
#endif

int main(void)
{
    console_init();
    for (uint32_t n = 1; n <= CRASH_AFTER; n++) {
        console_puts("hello from " CPU_NAME " ");
        console_putu(n);
        console_putc('\n');
        sleep_ms(1000u);
    }
    console_puts("locking up now\n");
    __asm__ volatile("cpsid f");
    __builtin_trap();
}
