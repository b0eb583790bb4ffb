/* Broken on purpose: classify() calls link_score(), which no library defines.
 *
 * The header-style declaration below is enough for the compiler, and
 * cc -shared leaves the symbol undefined (U in the symbol table). Loaded
 * with RTLD_LAZY the object would map fine and the process would die at the
 * first call; the engine's check resolves every undefined symbol first and
 * refuses the object before anything of it runs.
 */
#include <string.h>

int link_score(const char *text);

int classify(const char *text) {
    int score = link_score(text);
    if (strstr(text, "free") != NULL) {
        score += 30;
    }
    return score >= 50;
}
