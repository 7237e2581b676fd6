/* The data channel on the CMSDK APB UART1: bytes both ways, read without blocking, and an idle
 * wait that lets the core sleep (WFI) unless bytes are arriving. */
#include "sim.h"

#define UART_CTRL_TX_RX_ENABLE 0x3u
/* QEMU hands the receiver its next byte only after the last one was read, a little later; a
 * burst is read at full speed by polling this long after a byte before sleeping again (a sleep
 * lasts a SysTick period, 10 ms, which would cap a stream at 100 bytes a second). */
#define BURST_MS 20u

static uint32_t last_byte_ms;

void channel_open(void)
{
    UART_BAUDDIV(UART1_BASE) = 16u;
    UART_CTRL(UART1_BASE) = UART_CTRL_TX_RX_ENABLE;
    channel_puts(SIM_CHANNEL_ANNOUNCE);
}

void channel_putc(char c) { uart_putc(UART1_BASE, c); }

void channel_puts(const char *text) { uart_puts(UART1_BASE, text); }

void channel_putu(uint32_t value) { uart_putu(UART1_BASE, value); }

int channel_getc(void)
{
    if (!(UART_STATE(UART1_BASE) & UART_STATE_RX_FULL)) {
        return -1;
    }
    last_byte_ms = uptime_ms();
    return (int)(UART_DATA(UART1_BASE) & 0xFFu);
}

int channel_poll_line(struct channel_line *line)
{
    int c;
    while ((c = channel_getc()) >= 0) {
        if (c == '\r') {
            continue;
        }
        if (c == '\n') {
            line->text[line->length] = '\0';
            int complete = !line->overlong;
            line->length = 0u;
            line->overlong = 0;
            if (complete) {
                return 1;
            }
            continue;
        }
        if (line->length < CHANNEL_LINE_MAX) {
            line->text[line->length++] = (char)c;
        } else {
            line->overlong = 1;
        }
    }
    return 0;
}

void channel_idle(void)
{
    if (uptime_ms() - last_byte_ms >= BURST_MS) {
        __asm__ volatile("wfi");
    }
}

int parse_u32(const char *text, uint32_t *value)
{
    uint32_t result = 0u;
    if (*text == '\0') {
        return 0;
    }
    for (; *text; text++) {
        if (*text < '0' || *text > '9' || result > (0xFFFFFFFFu - 9u) / 10u) {
            return 0;
        }
        result = result * 10u + (uint32_t)(*text - '0');
    }
    *value = result;
    return 1;
}
