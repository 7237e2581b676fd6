/* Answers each line received on the data channel with "echo: <line>", and says so on the
 * console. */
#include "sim.h"

int main(void)
{
    static struct channel_line line; /* .bss: zeroed at reset, no memset needed */
    console_init();
    channel_open();
    console_puts("echo on " CPU_NAME ": ready\n");
    for (;;) {
        if (channel_poll_line(&line)) {
            channel_puts("echo: ");
            channel_puts(line.text);
            channel_putc('\n');
            console_puts("echo on " CPU_NAME ": ");
            console_puts(line.text);
            console_putc('\n');
        } else {
            channel_idle();
        }
    }
}
