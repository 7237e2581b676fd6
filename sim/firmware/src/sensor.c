/* Streams readings on the data channel, "reading <n> <value>", every `rate` milliseconds
 * (1000 at first), and obeys "rate <ms>" (10 to 60000): it answers "ok rate <ms>", or
 * "error: ..." for anything it does not understand. The console says what it does. */
#include "sim.h"

#define RATE_MIN_MS 10u
#define RATE_MAX_MS 60000u

static const char RATE_COMMAND[] = "rate ";

static int starts_with(const char *text, const char *prefix)
{
    while (*prefix) {
        if (*text++ != *prefix++) {
            return 0;
        }
    }
    return 1;
}

/* A value that looks like a temperature in milli-degrees: a slow triangle wave. */
static uint32_t sample(uint32_t n)
{
    uint32_t phase = n % 40u;
    return 21000u + 50u * (phase < 20u ? phase : 40u - phase);
}

static void obey(const char *command, uint32_t *rate_ms)
{
    uint32_t value;
    if (!starts_with(command, RATE_COMMAND)) {
        channel_puts("error: unknown command (try: rate <ms>)\n");
        return;
    }
    if (!parse_u32(command + sizeof RATE_COMMAND - 1u, &value) || value < RATE_MIN_MS ||
        value > RATE_MAX_MS) {
        channel_puts("error: rate must be 10 to 60000 ms\n");
        return;
    }
    *rate_ms = value;
    channel_puts("ok rate ");
    channel_putu(value);
    channel_putc('\n');
    console_puts("sensor on " CPU_NAME ": rate ");
    console_putu(value);
    console_puts(" ms\n");
}

int main(void)
{
    static struct channel_line line; /* .bss: zeroed at reset, no memset needed */
    uint32_t rate_ms = 1000u;
    uint32_t n = 0u;
    console_init();
    channel_open();
    console_puts("sensor on " CPU_NAME ": rate 1000 ms\n");
    uint32_t next = uptime_ms();
    for (;;) {
        if (channel_poll_line(&line)) {
            obey(line.text, &rate_ms);
            next = uptime_ms();
        }
        uint32_t now = uptime_ms();
        if ((int32_t)(now - next) >= 0) {
            n++;
            channel_puts("reading ");
            channel_putu(n);
            channel_putc(' ');
            channel_putu(sample(n));
            channel_putc('\n');
            next += rate_ms;
            if ((int32_t)(now - next) >= 0) {
                next = now + rate_ms; /* fell behind: do not catch up in a burst */
            }
        } else {
            channel_idle();
        }
    }
}
