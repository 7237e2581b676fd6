/* Prints CRASH_AFTER lines like hello, one a second, then executes an undefined instruction:
 * the UsageFault escalates to HardFault and the fault handler reports it. */
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
    console_puts("crashing now\n");
    __builtin_trap();
}
