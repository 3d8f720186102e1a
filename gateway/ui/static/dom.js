// What the page's scripts share about the document itself.

export const $ = (id) => document.getElementById(id);

/** Makes ``zone`` take a dropped file, highlighted while one is over it; ``receive`` gets the first file. */
export function dropZone(zone, receive) {
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    receive(event.dataTransfer.files[0]);
  });
}
