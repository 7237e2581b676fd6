/* Prints "hello from <cpu> <n>" once a second, forever. */
#include "sim.h"

int main(void)
{
    console_init();
    for (uint32_t n = 1;; n++) {
        console_puts("hello from " CPU_NAME " ");
        console_putu(n);
        console_putc('\n');
        sleep_ms(1000u);
    }
}
