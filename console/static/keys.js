// "n": get the next message — from the first queue on the home page, from this message's
// queue on a message page. Ignored while typing.
(() => {
  const typing = (el) => el && (el.isContentEditable || /^(input|textarea|select)$/i.test(el.tagName));
  document.addEventListener("keydown", (event) => {
    if (event.key !== "n" || typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const button = document.querySelector("form[data-next] button, button.next:not([disabled])");
    if (button && button.form) {
      event.preventDefault();
      button.form.requestSubmit(button);
    }
  });
})();
